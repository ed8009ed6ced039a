"""Time one checkpoint save: SafeCheckpointHook's atomic write against mmengine's in-place one.

    python tools/analysis/benchmark_save.py [--mb 100] [--saves 9] [--dir DIR]

Both write the same serialised state dict (``--mb`` MiB of float32 tensors, serialised once
with ``torch.save`` into memory, as mmengine's ``save_checkpoint`` does) into ``--dir``
(default: a temporary folder under the current directory, i.e. this disk): mmengine's
``LocalBackend.put`` writes the file in place; kd_det's ``atomic_write`` writes a temporary
file, fsyncs it, renames it into place and fsyncs the folder. Prints the median and range
of ``--saves`` saves of each, alternating so that both see the same disk state.
"""
import argparse
import io
import statistics
import tempfile
import time
from typing import Callable, List

import torch
from mmengine.fileio import LocalBackend

from kd_det.engine.safe_checkpoint_hook import atomic_write


def serialised_state(mb: int) -> bytes:
    """``torch.save`` of ``mb`` MiB of float32 tensors (1 MiB each), as bytes."""
    state = {f'layer{i}.weight': torch.full((256, 1024), float(i)) for i in range(mb)}
    with io.BytesIO() as f:
        torch.save(state, f)
        return f.getvalue()


def time_saves(writers: List[Callable[[str], None]], path: str, saves: int) -> List[List[float]]:
    """Seconds of each of ``saves`` rounds, per writer (the writers alternate)."""
    times: List[List[float]] = [[] for _ in writers]
    for _ in range(saves):
        for i, write in enumerate(writers):
            start = time.perf_counter()
            write(path)
            times[i].append(time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mb', type=int, default=100, help='state dict size in MiB')
    parser.add_argument('--saves', type=int, default=9, help='saves per writer')
    parser.add_argument('--dir', default='.', help='folder on the disk to measure')
    args = parser.parse_args(argv)
    if args.mb < 1 or args.saves < 1:
        parser.error(f'--mb {args.mb} --saves {args.saves}: expected both >= 1')
    data = serialised_state(args.mb)
    backend = LocalBackend()
    writers = {'mmengine (in place)': lambda path: backend.put(data, path),
               'kd_det atomic_write (tmp, fsync, rename)': lambda path: atomic_write(path, data)}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix='benchmark_save_') as folder:
        times = time_saves(list(writers.values()), f'{folder}/epoch_1.pth', args.saves)
    print(f'{len(data) / 2**20:.1f} MiB state dict, {args.saves} saves each, '
          f'into {args.dir!r}: median (min-max) seconds per save')
    for name, secs in zip(writers, times):
        print(f'{name:42s} {statistics.median(secs):.3f} ({min(secs):.3f}-{max(secs):.3f})')


if __name__ == '__main__':
    main()
