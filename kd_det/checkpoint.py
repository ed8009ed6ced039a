"""Safe checkpoint loading for mmengine on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True``: only tensors, containers and
allow-listed types are unpickled. mmengine 0.10 writes a few more types into
its checkpoints (the message hub's ``HistoryBuffer`` holding numpy arrays), so
``tools/test.py CKPT`` and ``--resume`` fail, and the usual workaround
(``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) executes any pickle. Instead, this
module

* allow-lists exactly the types mmengine writes (:data:`MMENGINE_SAFE_GLOBALS`);
* routes every mmengine checkpoint scheme (local files, ``http(s)://``,
  ``torchvision://``, ``open-mmlab://``) through :func:`safe_load`, which
  keeps ``weights_only=True`` (mmengine's URL loader used
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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import checkpoint as mme_checkpoint
from torch import nn
from torch.hub import download_url_to_file, get_dir


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or does not fit its model."""


def _numpy_globals() -> List[Any]:
    """The numpy callables/classes that pickled arrays and scalars refer to."""
    core = getattr(np, '_core', None) or np.core
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes)
                     if name.endswith('DType')]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray,
            np.dtype, *dtype_classes]


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


def register_safe_globals() -> None:
    """Allow-list :data:`MMENGINE_SAFE_GLOBALS` for ``weights_only`` loading."""
    torch.serialization.add_safe_globals(MMENGINE_SAFE_GLOBALS)


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
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if 'only HistoryBuffer' in str(err):
            raise CheckpointError(f'Refusing to load {filename!r}: {err}') from None
        if 'Unsupported global' not in str(err) and 'not an allowed global' not in str(err):
            raise CheckpointError(
                f'{filename!r} is not a readable PyTorch checkpoint: {err}') from None
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
        raise CheckpointError(
            f'Refusing to load {filename!r}: it pickles objects outside the '
            f'allow-list of torch weights_only loading: {unsafe}. Unpickling '
            f'them could run arbitrary code. If you trust this file, allow-list '
            f'those types with torch.serialization.add_safe_globals([...]) '
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


def install_safe_loading() -> None:
    """Allow-list mmengine's types and route every mmengine checkpoint scheme
    through :func:`safe_load`; called once by ``kd_det.integration.install``."""
    register_safe_globals()
    mme_checkpoint.CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    # mmengine's http(s), torchvision://, open-mmlab:// and mmcls:// loaders
    # all download through this module-level name.
    mme_checkpoint.load_url = safe_load_url


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
