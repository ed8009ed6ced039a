"""Peak memory growth of a block of work, for the benchmarks in tools/analysis/.

CUDA: growth of ``torch.cuda.max_memory_allocated`` over the memory allocated
before. CPU (Linux): growth of the process's peak resident set size (VmHWM,
reset through /proc/self/clear_refs) over the resident size before, with
glibc's mmap threshold lowered and free heap trimmed first so that the
resident set follows the live tensors.
"""
import ctypes
import gc
from typing import Callable, Optional, Union

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _glibc() -> Optional[ctypes.CDLL]:
    """glibc, to tune and trim the heap; None elsewhere (the CPU growth is then less exact)."""
    try:
        return ctypes.CDLL('libc.so.6')
    except OSError:
        return None


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` field (``'VmRSS'``, ``'VmHWM'``) in bytes."""
    with open('/proc/self/status') as status:
        line = next(line for line in status if line.startswith(field + ':'))
    return int(line.split()[1]) * 1024


class PeakMemory:
    """Peak memory growth of a block of work: CUDA max allocated, or peak RSS on CPU.

    On CPU, building the meter sets glibc's mmap threshold (and trim threshold,
    unless None) for the whole process: build it after any timing, since
    allocations above the threshold then page-fault on fresh memory.

    Args:
        device (str | torch.device): Where the work runs.
        mmap_threshold (int): Bytes from which glibc serves an allocation with
            its own mapping, returned to the system when freed (CPU).
        trim_threshold (int, optional): Free bytes at the top of the heap that
            make glibc return them to the system (CPU). None: glibc's own.
    """

    def __init__(self, device: Union[str, torch.device], mmap_threshold: int = 64 * 1024,
                 trim_threshold: Optional[int] = None) -> None:
        self.device = torch.device(device)
        self.libc = None if self.device.type == 'cuda' else _glibc()
        if self.libc is not None:
            self.libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
            if trim_threshold is not None:
                self.libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)

    def measure(self, work: Callable[[], None]) -> int:
        """Bytes in use at the peak of ``work`` beyond those in use before it.

        Raises OSError on CPU where /proc/self is missing (not Linux).
        """
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            work()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - start
        if self.libc is not None:
            self.libc.malloc_trim(0)
        with open('/proc/self/clear_refs', 'w') as clear_refs:
            clear_refs.write('5')  # reset VmHWM to the current resident size
        start = _status_bytes('VmRSS')
        work()
        return _status_bytes('VmHWM') - start
