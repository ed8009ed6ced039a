"""Writing files: atomically, with the permissions the user's umask gives.

Every file kd_det writes goes through :func:`atomic_write` (checkpoints of
:class:`~kd_det.engine.SafeCheckpointHook`, ``last_checkpoint``, exported and
published students), so a kill or a full disk never leaves a truncated file
under the final name, and a teammate reads what the umask lets them read
(``-rw-r--r--`` under the common umask 022).
"""
import contextlib
import io
import os
import os.path as osp
import shutil
from pathlib import Path
from typing import Any, Union

import torch
from mmengine.utils import mkdir_or_exist

#: Suffix of the temporary file a file is written to before it is renamed.
TMP_SUFFIX = '.kd_det.tmp'


def current_umask() -> int:
    """The process's umask (``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX; Windows cannot open folders)."""
    if os.name != 'posix':
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_space(directory: str) -> str:
    try:
        return f'{shutil.disk_usage(directory).free / 2**20:.1f} MiB free'
    except OSError as err:
        return f'free space unknown ({err})'


def atomic_write(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either untouched or complete.

    Writes ``path + TMP_SUFFIX`` (created with mode ``0o666`` less the umask,
    as ``open`` does), flushes and fsyncs it, renames it over ``path``
    (``os.replace``) and fsyncs the folder. On an error before the rename the
    temporary file is removed and ``path`` is left as it was.

    Raises:
        OSError: the write failed (e.g. a full disk); the message names ``path``,
            the size to write and the free space on its disk.
    """
    path = str(path)
    directory = osp.dirname(osp.abspath(path))
    tmp = path + TMP_SUFFIX
    try:
        mkdir_or_exist(directory)
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not isinstance(err, OSError):
            raise
        message = (f'Could not save {path!r} ({len(data) / 2**20:.1f} MiB, '
                   f'{_free_space(directory)} on {directory!r}): {err.strerror or err}')
        raise (OSError(err.errno, message) if err.errno else OSError(message)) from err


def atomic_torch_save(obj: Any, path: Union[str, Path]) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())
