"""Safe checkpoint loading for mmengine, on every supported torch.

A checkpoint is a pickle, and unpickling an arbitrary one runs arbitrary code.
torch >= 2.6 loads with ``weights_only=True``: only tensors, containers and
allow-listed types are unpickled. mmengine 0.10 writes a few more types into
its checkpoints (the message hub's ``HistoryBuffer`` holding numpy arrays), so
``tools/test.py CKPT`` and ``--resume`` fail there, and the usual workaround
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) executes any pickle. torch < 2.6 loads
anything by default, and its ``weights_only`` allow-list cannot be extended.
This module

* allow-lists exactly the types mmengine writes (:data:`MMENGINE_SAFE_GLOBALS`):
  in torch's own ``weights_only`` unpickler on torch >= 2.6, in kd_det's
  restricted unpickler (:mod:`kd_det.safe_unpickler`) on older torch;
* routes every mmengine checkpoint scheme (local files, ``http(s)://``,
  ``torchvision://``, ``open-mmlab://``) through :func:`safe_load`, which
  loads through that allow-list (mmengine's URL loader used
  ``torch.hub.load_state_dict_from_url``, whose default is
  ``weights_only=False``) and turns torch's errors into messages that name
  the file and what is wrong with it.

Importing :mod:`kd_det` applies both (:func:`install_safe_loading`, called by
``kd_det.integration.install``). :func:`read_state_dict` and
:func:`load_fitting_weights` are kd_det's one way to load weights into a model.
"""
import logging
import os
import os.path as osp
import pickle
import types
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import checkpoint as mme_checkpoint
from torch import nn
from torch.hub import download_url_to_file, get_dir

from . import safe_unpickler

#: torch's ``weights_only`` unpickler takes kd_det's allow-list from this
#: version on (``add_safe_globals`` with ``(callable, 'module.name')`` entries);
#: before it, kd_det's own restricted unpickler loads instead.
TORCH_ALLOW_LIST = tuple(int(p) for p in torch.__version__.split('.')[:2]) >= (2, 6)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or does not fit its model."""


def _numpy_globals() -> List[Any]:
    """The numpy callables/classes that pickled arrays and scalars refer to.

    Each under both names a pickle may use: numpy 1.x writes
    ``numpy.core.multiarray``, numpy 2 ``numpy._core.multiarray``, so a
    checkpoint saved under one loads under the other.
    """
    # the functions pickles of an array and of a scalar call, wherever this numpy keeps them
    rebuilders = {'_reconstruct': np.zeros(0).__reduce__()[0],
                  'scalar': np.float64(0).__reduce__()[0]}
    named = [(fn, f'numpy.{core}.multiarray.{name}')
             for name, fn in rebuilders.items() for core in ('core', '_core')]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    dtype_classes = [getattr(dtypes, name) for name in dir(dtypes)
                     if name.endswith('DType')] if dtypes is not None else []
    return [*named, np.ndarray, np.dtype, *dtype_classes]


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to ``HistoryBuffer``'s statistics methods.

    A pickled ``HistoryBuffer`` refers to its statistics methods as
    ``builtins.getattr(HistoryBuffer, 'mean')``. Allow-listing the real
    ``getattr`` would let a pickle reach any attribute of any allowed object
    (and from there, code execution); this stand-in resolves only those methods.
    """
    # mmengine fills _statistics_methods with these four when it makes a buffer
    allowed = {'min', 'max', 'current', 'mean', *HistoryBuffer._statistics_methods}
    if obj is HistoryBuffer and name in allowed:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer '
        'statistics methods are allowed')


#: Types mmengine stores in a checkpoint besides tensors and containers.
MMENGINE_SAFE_GLOBALS: List[Any] = [
    HistoryBuffer, (history_buffer_getattr, 'builtins.getattr'), *_numpy_globals()]


def allow_globals(entries: List[Any]) -> None:
    """Allow-list more types for kd_det's checkpoint loading, on any torch.

    ``entries`` are classes/functions, or ``(object, 'module.name')`` pairs that
    bind a pickled name to an object. Only allow types whose unpickling you
    trust: what is allowed here can be constructed by any checkpoint.
    """
    safe_unpickler.allow(entries)  # kept whole on every torch (tests use it on both)
    if TORCH_ALLOW_LIST:
        torch.serialization.add_safe_globals(entries)


def register_safe_globals() -> None:
    """Allow-list :data:`MMENGINE_SAFE_GLOBALS` for kd_det's loading."""
    allow_globals(MMENGINE_SAFE_GLOBALS)


def _load(file: Any, map_location: Optional[Any]) -> Any:
    """``torch.load`` through the allow-list: torch's ``weights_only`` unpickler
    on torch >= 2.6, else kd_det's restricted unpickler, which stands in for it
    (``weights_only`` is off only because that unpickler replaces torch's)."""
    if TORCH_ALLOW_LIST:
        return torch.load(file, map_location=map_location, weights_only=True)
    return torch.load(file, map_location=map_location, pickle_module=safe_unpickler,
                      weights_only=False)


def _outside_allow_list(filename: str, err: Exception) -> List[str]:
    """The globals of ``filename`` outside the allow-list (torch >= 2.6 lists all of
    them; kd_det's unpickler stops at the first)."""
    if TORCH_ALLOW_LIST:
        return torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    return [str(err).split('Unsupported global: ', 1)[1].split(' ', 1)[0]]


def safe_load(filename: str, map_location: Optional[Any] = None) -> Any:
    """``torch.load(filename, weights_only=True)`` with errors that say what is wrong.

    Raises:
        FileNotFoundError: ``filename`` does not exist.
        CheckpointError: the file is not a readable checkpoint (truncated,
            corrupt, another format) or it pickles objects outside the allow-list.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file not found: {filename!r}')
    try:
        return _load(filename, map_location)
    except pickle.UnpicklingError as err:
        if 'only HistoryBuffer' in str(err):
            raise CheckpointError(f'Refusing to load {filename!r}: {err}') from None
        if 'Unsupported global' not in str(err) and 'not an allowed global' not in str(err):
            raise CheckpointError(
                f'{filename!r} is not a readable PyTorch checkpoint: {err}') from None
        unsafe = _outside_allow_list(filename, err)
        raise CheckpointError(
            f'Refusing to load {filename!r}: it pickles objects outside the '
            f'allow-list of safe checkpoint loading: {unsafe}. Unpickling '
            f'them could run arbitrary code. If you trust this file, allow-list '
            f'those types with kd_det.checkpoint.allow_globals([...]) '
            f'before loading.') from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f'{filename!r} is not a readable PyTorch checkpoint (truncated, '
            f'corrupt or another format?): {err}') from None


def safe_load_url(url: str,
                  model_dir: Optional[str] = None,
                  map_location: Optional[Any] = None,
                  progress: bool = True,
                  **kwargs) -> Any:
    """Download ``url`` into torch's hub cache (once) and :func:`safe_load` it.

    Same signature as the ``load_url`` mmengine's URL schemes call. In
    distributed runs, local rank 0 downloads first and the others wait.
    """
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, osp.basename(url.split('?')[0]))
    rank, world_size = get_dist_info()
    local_rank = int(os.environ.get('LOCAL_RANK', rank))
    if local_rank == 0 and not osp.exists(cached):
        download_url_to_file(url, cached, progress=progress)
    if world_size > 1:
        torch.distributed.barrier()
    return safe_load(cached, map_location)


def load_from_local(filename: str, map_location: Optional[Any] = None) -> Any:
    """mmengine's loader for local paths (scheme ``''``), through :func:`safe_load`."""
    return safe_load(filename, map_location)


class _AllowListTorch(types.ModuleType):
    """``torch`` as mmengine's checkpoint module sees it: ``torch.load`` goes
    through the allow-list (:func:`_load`), everything else is torch's own."""

    def __init__(self) -> None:
        super().__init__('torch')

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, map_location: Optional[Any] = None, **kwargs) -> Any:
        return _load(f, map_location)


def install_safe_loading() -> None:
    """Allow-list mmengine's types and route every mmengine checkpoint scheme
    through the allow-list; called once by ``kd_det.integration.install``."""
    register_safe_globals()
    mme_checkpoint.CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    # mmengine's http(s), torchvision://, open-mmlab:// and mmcls:// loaders
    # all download through this module-level name.
    mme_checkpoint.load_url = safe_load_url
    # The others (s3/petrel, pavi, a local open-mmlab:// model) call torch.load
    # themselves, with torch's default (anything, before torch 2.6).
    mme_checkpoint.torch = _AllowListTorch()


def read_state_dict(filename: str, what: str = 'checkpoint') -> Dict[str, Any]:
    """The ``state_dict`` of checkpoint ``filename``: :func:`read_checkpoint`'s first part."""
    return read_checkpoint(filename, what)[0]


def read_checkpoint(filename: str, what: str = 'checkpoint'
                    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(state_dict, meta)`` of checkpoint ``filename`` (local path or URL), DDP's
    ``module.`` stripped from the keys; ``meta`` is ``{}`` when the file has none.

    Read by mmengine's ``CheckpointLoader`` (safe for every scheme once kd_det is imported);
    a file that is itself a dict of weights is taken as the state dict.

    Raises:
        FileNotFoundError / CheckpointError: missing, unreadable, unsafe, or not a dict.
    """
    checkpoint = mme_checkpoint.CheckpointLoader.load_checkpoint(filename, map_location='cpu')
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{what} {filename!r} holds a {type(checkpoint).__name__}, '
                              'expected a dict of weights')
    state = checkpoint.get('state_dict', checkpoint)
    meta = checkpoint.get('meta') if 'state_dict' in checkpoint else None
    return ({k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()},
            meta if isinstance(meta, dict) else {})


def load_fitting_weights(module: nn.Module, state: Dict[str, Any], source: str, target: str,
                         strict: bool = True, prefixes: Optional[Tuple[str, ...]] = None,
                         strict_option: Optional[str] = None) -> None:
    """Load ``state`` into ``module``, refusing keys or shapes that do not fit.

    Args:
        module: the model to load into.
        state: the weights, e.g. from :func:`read_state_dict`.
        source, target: how the error names the weights and the model
            (``"teacher_ckpt 'x.pth'"``, ``'teacher_config'``).
        strict: raise on any missing, unexpected or mis-shaped key; ``False``
            warns and loads the keys that fit.
        prefixes: compare and load only the keys (of both) starting with these.
        strict_option: the user's option that sets ``strict`` (e.g.
            ``'teacher_strict'``), named in the error and the warning.

    Raises:
        CheckpointError: with ``strict``, a key or shape does not fit; the message
            counts and names (up to 5 of) each kind.
    """
    own = module.state_dict()
    if prefixes is not None:
        own = {k: v for k, v in own.items() if k.startswith(prefixes)}
        state = {k: v for k, v in state.items() if k.startswith(prefixes)}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched_keys = [k for k in sorted(own.keys() & state.keys())
                       if getattr(state[k], 'shape', None) != own[k].shape]
    mismatched = [f'{k}: checkpoint {tuple(getattr(state[k], "shape", ()))} vs model '
                  f'{tuple(own[k].shape)}' for k in mismatched_keys]
    if missing or unexpected or mismatched:
        hint = ''
        if any(k.startswith('student.') for k in unexpected):
            hint = (' It looks like a kd_det distillation checkpoint: export its '
                    'student first with tools/export_student.py.')
        message = (f'{source} does not fit {target}: {len(missing)} missing keys '
                   f'{_head(missing)}, {len(unexpected)} unexpected keys {_head(unexpected)}, '
                   f'{len(mismatched)} shape mismatches {_head(mismatched)}.{hint}')
        if strict:
            advice = f' ({strict_option}=False loads what fits.)' if strict_option else ''
            raise CheckpointError(message + advice)
        print_log(f'{message} Loading the keys that fit ({strict_option or "strict"}=False).',
                  logger='current', level=logging.WARNING)
    module.load_state_dict(
        {k: v for k, v in state.items() if k in own and k not in mismatched_keys},
        strict=False)


def _head(items: List[str], n: int = 5) -> str:
    return str(items[:n])[:-1] + (', ...]' if len(items) > n else ']')
