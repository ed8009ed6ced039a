"""Benchmark the overhead of a distillation training step.

    python tools/analysis/benchmark_distill.py [CONFIG | --all] [--size H W] [--batch N]
        [--repeats R] [--warmup W] [--device cpu|cuda] [--threads T] [--amp]
        [--teacher-ckpt PATH] [--profile N]

CONFIG is a distillation config path or one of the shortcuts ``ssim`` (default),
``rcka``, ``ssim+rcka`` (the Faster R-CNN R-101 -> R-50 COCO configs). ``--all``
benchmarks every shipped COCO distillation config, once per distinct model (the 1x and
2x schedules of a pair share one row), and ends with one table of all rows.

On the same synthetic batches (random images, a few random boxes each, already
through the data preprocessor) and interleaved a, b, c, a, b, c, ... after
warm-up, it times:

(a) student: the student built from ``model.student`` alone, one training step
    (loss + backward + optimizer step, as mmengine's ``train_step`` minus data
    preprocessing);
(b) teacher: the teacher work the config needs, through the distiller's own
    ``teacher_outputs`` under ``no_grad``: backbone (+ neck), and its RoI head (on
    the RoIs the student sampled in (a)) or dense head when a loss reads them;
(c) distill: the FeatureDistillDetector's training step.

On CPU the default clock is the process's CPU time (``--clock cpu``): on a shared
machine it leaves out the time other jobs hold the cores, which wall time
(``--clock wall``, the default on CUDA) counts.

c cannot cost less than a + b, so c / (a + b) - 1 is the overhead kd_det adds.
The optimizers come from the config's ``optim_wrapper`` with the learning rate
set to 0: every update is computed but the weights, hence the proposals and the
work of each step, stay fixed. Student (a) starts from the distillation
student's weights and each phase reseeds torch identically, so (a) and (c)
sample the same proposals.

Peak memory of a phase = the tensors its models keep (parameters, buffers,
optimizer state) + the peak growth over the memory in use when the phase
starts, measured in a separate pass after timing (kd_det.analysis.memory).
CUDA: growth of ``max_memory_allocated``. CPU: growth of the process's peak RSS
(VmHWM, reset per phase through /proc/self/clear_refs), with glibc's mmap
threshold lowered to 64 KiB and free heap trimmed first so that RSS follows
the live tensors.
Gradients are freed after each step (``zero_grad``), so they count as growth.
"""
import argparse
import glob
import multiprocessing
import os.path as osp
import shlex
import statistics
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.structures import InstanceData
from torch import nn

import kd_det  # noqa: F401  (registers kd_det's modules)
from kd_det.analysis.random_weights import save_random_detector
from kd_det.analysis.steps import PHASES, Batch, PhaseSteps, device_name
from kd_det.models.teacher import teacher_model_cfg

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SHORTCUTS = {
    'ssim': 'configs/ssim/ssim_faster-rcnn_r101-to-r50_fpn_1x_coco.py',
    'rcka': 'configs/rcka/rcka_faster-rcnn_r101-to-r50_fpn_1x_coco.py',
    'ssim+rcka': 'configs/ssim_rcka/ssim-rcka_faster-rcnn_r101-to-r50_fpn_1x_coco.py',
}
DEFAULTS = dict(cpu=dict(size=(512, 512), batch=2, threads=1, clock='cpu'),
                cuda=dict(size=(800, 1333), batch=2, threads=None, clock='wall'))


def shipped_configs() -> List[List[str]]:
    """The COCO distillation configs under configs/, grouped by identical student, teacher
    model and losses (the teacher weights aside: the benchmark's are random)."""
    groups: Dict[str, List[str]] = {}
    for path in sorted(glob.glob(osp.join(REPO, 'configs', '*', '*.py'))):
        if osp.basename(osp.dirname(path)) in ('_base_', 'demo', 'demo_modern'):
            continue
        model = Config.fromfile(path).model.to_dict()
        if model.get('type') == 'FeatureDistillDetector':
            model.pop('teacher_ckpt')  # the benchmark's teacher weights are random
            model['teacher_config'] = teacher_model_cfg(model['teacher_config']).to_dict()
            groups.setdefault(repr(model), []).append(path)
    return list(groups.values())


def resolve_config(config: str) -> str:
    """A shortcut's config path (relative to the repo), or ``config`` itself."""
    return osp.join(REPO, SHORTCUTS[config]) if config in SHORTCUTS else config


def save_random_teacher(model_cfg: Config, directory: str) -> str:
    """Save the teacher with random weights, initialised as training starts; its path."""
    return save_random_detector(teacher_model_cfg(model_cfg.teacher_config),
                                osp.join(directory, 'random_teacher.pth'))


def _num_classes(cfg) -> int:
    """The first non-zero ``num_classes`` in a (nested) model config, else 0."""
    if isinstance(cfg, dict):
        if 'num_classes' in cfg:
            return cfg['num_classes']
        values = cfg.values()
    elif isinstance(cfg, (list, tuple)):
        values = cfg
    else:
        return 0
    return next((n for n in map(_num_classes, values) if n), 0)


def synthetic_batches(model: nn.Module, num: int, batch: int, size: Tuple[int, int],
                      num_classes: int, seed: int = 0) -> List[Batch]:
    """``num`` batches of random images with 1-5 random boxes each, preprocessed once."""
    gen = torch.Generator().manual_seed(seed)
    height, width = size
    extent = torch.tensor([width, height, width, height], dtype=torch.float32)
    batches = []
    for _ in range(num):
        images, samples = [], []
        for _ in range(batch):
            images.append(torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                                        generator=gen))
            boxes = torch.rand(int(torch.randint(1, 6, (), generator=gen)), 4, generator=gen)
            corner, side = boxes[:, :2] * 0.7, 0.05 + boxes[:, 2:] * 0.25
            sample = DetDataSample(metainfo=dict(img_id=len(batches) * batch + len(samples),
                                                 img_shape=size, ori_shape=size,
                                                 scale_factor=(1.0, 1.0)))
            sample.gt_instances = InstanceData(
                bboxes=torch.cat([corner, corner + side], 1) * extent,
                labels=torch.randint(0, num_classes, (len(boxes), ), generator=gen))
            samples.append(sample)
        data = model.data_preprocessor(dict(inputs=images, data_samples=samples), True)
        batches.append((data['inputs'], data['data_samples']))
    return batches


def benchmark(config: str, size: Tuple[int, int], batch: int, repeats: int, warmup: int,
              device: str = 'cpu', threads: Optional[int] = None, amp: bool = False,
              teacher_ckpt: Optional[str] = None, profile: int = 0,
              clock: str = 'wall') -> dict:
    """Time phases (a) student, (b) teacher, (c) distill and measure their peak memory.

    Returns a dict with ``config``, ``device``, ``clock``, ``size``, ``batch``, ``repeats``,
    ``warmup``, ``times`` (seconds per repeat of each phase), ``median``, ``ratio`` = c / (a + b),
    ``peak_mib`` per phase, ``memory_ratio`` = peak c / (peak a + peak b) and ``profile``
    (the ``--profile`` table of a distillation step, or None).
    """
    if amp and not device.startswith('cuda'):
        raise ValueError('--amp needs a CUDA device')
    if threads:
        torch.set_num_threads(threads)
    register_all_modules()
    cfg = Config.fromfile(config)
    if cfg.model.get('type') != 'FeatureDistillDetector':
        raise ValueError(f'{config} is not a FeatureDistillDetector config')
    with tempfile.TemporaryDirectory() as tmp:
        cfg.model.teacher_ckpt = teacher_ckpt or save_random_teacher(cfg.model, tmp)
        model = MODELS.build(cfg.model)
    phases = PhaseSteps(cfg, model, device, amp, lr=0.0)
    batches = synthetic_batches(model, warmup + repeats, batch, size,
                                _num_classes(cfg.model.student) or 80)
    times = phases.time(batches, warmup, clock)
    peak_mib = phases.peak_mib(batches[0])
    median = {phase: statistics.median(values) for phase, values in times.items()}
    return dict(
        config=config, device=device_name(device, threads, amp), clock=clock,
        size=tuple(size), batch=batch, repeats=repeats, warmup=warmup, times=times, median=median,
        ratio=median['distill'] / (median['student'] + median['teacher']),
        peak_mib=peak_mib,
        memory_ratio=peak_mib['distill'] / (peak_mib['student'] + peak_mib['teacher']),
        profile=profile_step(lambda: phases.run('distill', batches[0], 0), device, profile)
        if profile else None)


def profile_step(work: Callable[[], None], device: str, rows: int) -> str:
    """torch.profiler table of ``work``: the top ``rows`` ops by self device time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    sort_by = 'self_cpu_time_total'
    if device.startswith('cuda'):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        sort_by = 'self_cuda_time_total'
    with torch.profiler.profile(activities=activities) as prof:
        work()
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


def format_report(result: dict) -> str:
    """Plain-text medians, then the Markdown table row (with header) for docs/benchmarks.md."""
    names = dict(student='(a) student train step', teacher='(b) teacher inference',
                 distill='(c) distill train step')
    lines = [f'{result["config"]}: {result["size"][0]}x{result["size"][1]}, batch '
             f'{result["batch"]}, {result["device"]}; median {result["clock"]} time of '
             f'{result["repeats"]} after {result["warmup"]} warm-up']
    for phase in PHASES:
        spread = ' '.join(f'{t:.3f}' for t in result['times'][phase])
        lines.append(f'  {names[phase]:<24} {result["median"][phase]:8.3f} s  peak '
                     f'{result["peak_mib"][phase]:8.0f} MiB  (runs: {spread})')
    lines.append(f'  c / (a + b) = {result["ratio"]:.3f}   peak c / (peak a + peak b) = '
                 f'{result["memory_ratio"]:.3f}')
    lines += ['', markdown_table([result])]
    return '\n'.join(lines)


def markdown_table(results: Sequence[dict]) -> str:
    """A Markdown table with one row per benchmark result."""
    rows = ['| config | device | input | a: student step (s) | b: teacher inference (s) | '
            'c: distill step (s) | c / (a + b) | peak a / b / c (MiB) | '
            'peak c / (a + b) |',
            '|---|---|---|---:|---:|---:|---:|---:|---:|']
    for r in results:
        med, peak = r['median'], r['peak_mib']
        rows.append(
            f'| {osp.basename(r["config"])} | {r["device"]}, {r["clock"]} time | {r["batch"]} x '
            f'{r["size"][0]}x{r["size"][1]} | {med["student"]:.3f} | {med["teacher"]:.3f} | '
            f'{med["distill"]:.3f} | {r["ratio"]:.3f} | {peak["student"]:.0f} / '
            f'{peak["teacher"]:.0f} / {peak["distill"]:.0f} | {r["memory_ratio"]:.3f} |')
    return '\n'.join(rows)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', default='ssim',
                        help=f'distillation config path or one of {list(SHORTCUTS)}')
    parser.add_argument('--all', action='store_true',
                        help='every shipped COCO distillation config (one row per model)')
    parser.add_argument('--size', nargs=2, type=int, metavar=('H', 'W'),
                        help='input size (default: 512 512 on CPU, 800 1333 on CUDA)')
    parser.add_argument('--batch', type=int, help='images per batch (default 2)')
    parser.add_argument('--repeats', type=int, default=5, help='timed repeats per phase')
    parser.add_argument('--warmup', type=int, default=2, help='untimed repeats first')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int,
                        help='torch.set_num_threads (default: 1 on CPU, unchanged on CUDA)')
    parser.add_argument('--clock', choices=['cpu', 'wall'],
                        help='process CPU time or wall time (default: cpu on CPU, wall on CUDA)')
    parser.add_argument('--amp', action='store_true', help='autocast float16 (CUDA only)')
    parser.add_argument('--teacher-ckpt', help='teacher weights (default: random, saved to '
                        'a temporary directory)')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='also print the top N ops of one distillation step')
    args = parser.parse_args(argv)
    defaults = DEFAULTS['cuda' if args.device.startswith('cuda') else 'cpu']
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run, every option spelled out."""
    parts = ['python', 'tools/analysis/benchmark_distill.py',
             '--all' if args.all else args.config,
             '--size', *map(str, args.size), '--batch', str(args.batch),
             '--repeats', str(args.repeats), '--warmup', str(args.warmup),
             '--device', args.device, '--clock', args.clock]
    if args.threads:
        parts += ['--threads', str(args.threads)]
    if args.amp:
        parts.append('--amp')
    if args.teacher_ckpt:
        parts += ['--teacher-ckpt', args.teacher_ckpt]
    return shlex.join(parts)


def benchmark_all(args: argparse.Namespace) -> List[dict]:
    """:func:`benchmark` of every shipped config group; prints each report, then the table.

    Each group runs in a fresh process, exactly as the single-config command does:
    in one process, the peak-memory pass of a group (glibc's mmap threshold lowered
    for the whole process) would slow the timed steps of every later group.
    """
    results = []
    spawn = multiprocessing.get_context('spawn')
    for group in shipped_configs():
        with spawn.Pool(1) as pool:
            result = pool.apply(benchmark, (group[0], tuple(args.size), args.batch,
                                            args.repeats, args.warmup, args.device,
                                            args.threads, args.amp, None, 0, args.clock))
        result['config'] = ', '.join(osp.basename(path) for path in group)
        print(format_report(result), end='\n\n', flush=True)
        results.append(result)
    print(markdown_table(results))
    return results


def main(argv: Optional[Sequence[str]] = None):
    args = parse_args(argv)
    if args.all:
        results = benchmark_all(args)
        print(f'\ncommand: {command_line(args)}')
        return results
    result = benchmark(resolve_config(args.config), tuple(args.size), args.batch,
                       args.repeats, args.warmup, args.device, args.threads, args.amp,
                       args.teacher_ckpt, args.profile, args.clock)
    print(format_report(result))
    print(f'\ncommand: {command_line(args)}')
    if result['profile']:
        print(f'\none distillation step, top {args.profile} ops:\n{result["profile"]}')
    return result


if __name__ == '__main__':
    main(sys.argv[1:])
