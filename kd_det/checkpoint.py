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

Importing :mod:`kd_det` applies both.
"""
import os
import os.path as osp
import pickle
from typing import Any, List, Optional

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner import checkpoint as mme_checkpoint
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


def _install() -> None:
    register_safe_globals()
    mme_checkpoint.CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)
    # mmengine's http(s), torchvision://, open-mmlab:// and mmcls:// loaders
    # all download through this module-level name.
    mme_checkpoint.load_url = safe_load_url


_install()
