"""Check a distillation config before a long run: one verdict, OK / WARN / FAIL per line.

    python -m kd_det.preflight CONFIG [--teacher-ckpt CKPT] [--amp] [--iters N]
        [--val-images M] [--device cpu|cuda] [--clock cpu|wall] [--expected-map AP]
        [--work-dir DIR] [--cfg-options k=v ...]

On the config's own model, data and evaluator: (1) the teacher loads strictly and reaches
its expected box mAP on M validation images (the mmdet model zoo's number, or
``--expected-map``, else a floor); (2) each distillation loss's gradient share on the
student's input images against the detector's own, the total against ``clip_grad``; (3) N
real training iterations of the distiller, the student alone and the teacher alone (time,
c / (a + b), peak memory, every loss finite), and under ``--amp`` each distillation loss
against float32; (4) the table, also written with a JSON twin to the work dir. Exit code:
0 when nothing FAILs, 1 when a check FAILs, 2 on a bad command line.
``tools/preflight.py`` and ``mim run kd_det preflight`` run this same ``main``.
"""
import argparse
import os
import os.path as osp
import shlex
import sys
from typing import List, Optional, Sequence

import torch
from mmdet.utils import register_all_modules
from mmengine.config import DictAction
from mmengine.logging import MMLogger
from mmengine.utils import import_modules_from_strings

from kd_det.analysis.preflight import (build_distiller, check_amp, check_balance,
                                       check_teacher_classes,
                                       check_steps, check_teacher, guarded, missing_data)
from kd_det.analysis.steps import device_name, train_batches
from kd_det.analysis.verdict import Line, exit_code, format_table, to_json
from kd_det.configs import read_config

BALANCE_BATCHES = 2  # at most, of the --iters batches


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='distillation config (a file or kd_det::NAME)')
    parser.add_argument('--teacher-ckpt', help="teacher weights (default: the config's "
                        'model.teacher_ckpt)')
    parser.add_argument('--amp', action='store_true', help='train the steps with '
                        'AmpOptimWrapper and compare the losses with float32 (CUDA)')
    parser.add_argument('--iters', type=int, default=3, help='training iterations per '
                        'phase (default 3; the first is not timed)')
    parser.add_argument('--val-images', type=int, default=50,
                        help='validation images the teacher is scored on (default 50)')
    parser.add_argument('--expected-map', type=float, help="the teacher's expected box "
                        'mAP in %% on this data (default: the mmdet model zoo\'s)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--clock', choices=['cpu', 'wall'], help='step times in process '
                        'CPU time (default on CPU: leaves out the time other jobs hold the '
                        'cores) or wall time (default on CUDA)')
    parser.add_argument('--work-dir', help='where preflight.md and preflight.json go '
                        '(default ./work_dirs/preflight/<config name>)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error(f'--iters must be >= 1, got {args.iters}')
    if args.val_images < 1:
        parser.error(f'--val-images must be >= 1, got {args.val_images}')
    if args.amp and not args.device.startswith('cuda'):
        parser.error(f'--amp needs a CUDA device, got --device {args.device}: '
                     "mmengine's AmpOptimWrapper (float16 with a loss scaler) runs on "
                     'CUDA only; run the CPU preflight without --amp')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available; use --device cpu')
    if args.clock is None:
        args.clock = 'wall' if args.device.startswith('cuda') else 'cpu'
    return args


def preflight_config(args: argparse.Namespace):
    """The config with --cfg-options and --teacher-ckpt applied, its custom_imports done."""
    cfg = read_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.teacher_ckpt:
        cfg.model.teacher_ckpt = args.teacher_ckpt
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    if cfg.model.get('type') != 'FeatureDistillDetector':
        print(f'{args.config}: model.type is {cfg.model.get("type")!r}; preflight checks '
              'FeatureDistillDetector configs', file=sys.stderr)
        raise SystemExit(2)
    return cfg


def run_checks(cfg, args: argparse.Namespace) -> List[Line]:
    """Every check in order; those needing the model stop at a failed teacher load."""
    model, line = build_distiller(cfg, args.seed)
    lines = [line]
    if model is None:
        return lines
    model.to(args.device)
    lines += guarded('teacher classes', lambda: check_teacher_classes(model, cfg))
    lines += guarded('teacher mAP', lambda: check_teacher(model, cfg, args.val_images,
                                                          args.expected_map),
                     loader='val_dataloader')
    try:
        batches = train_batches(cfg, model, args.iters, args.seed)
    except FileNotFoundError as err:  # balance and steps train on these batches
        return lines + [missing_data('train data', 'train_dataloader', err)]
    max_norm = (cfg.optim_wrapper.get('clip_grad') or {}).get('max_norm')
    lines += guarded('balance', lambda: check_balance(model, batches[:BALANCE_BATCHES],
                                                      max_norm))
    if args.amp:
        lines += guarded('amp', lambda: check_amp(model, batches[0], args.device))
    lines += guarded('steps', lambda: check_steps(cfg, model, batches, args.device, args.amp,
                                                  args.clock))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the checks, print the table, write preflight.md/.json; return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    # mmengine's INFO lines (every parameter's init) would bury the table; warnings stay
    MMLogger.get_instance('kd_det.preflight', log_level='WARNING')
    register_all_modules()
    cfg = preflight_config(args)
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'preflight', osp.splitext(osp.basename(args.config))[0])
    lines = run_checks(cfg, args)
    command = shlex.join(['python', '-m', 'kd_det.preflight', *argv])
    table = format_table(lines)
    header = f'preflight of {args.config} on {device_name(args.device, None, args.amp)}'
    print(f'{header}\n\n{table}\n\ncommand: {command}', flush=True)
    os.makedirs(work_dir, exist_ok=True)
    with open(osp.join(work_dir, 'preflight.md'), 'w') as f:
        f.write(f'{header}\n\n{table}\n\ncommand: `{command}`\n')
    with open(osp.join(work_dir, 'preflight.json'), 'w') as f:
        f.write(to_json(lines, config=args.config, command=command, device=device_name(
            args.device, None, args.amp), amp=args.amp, iters=args.iters,
            val_images=args.val_images) + '\n')
    print(f'wrote {osp.join(work_dir, "preflight.md")} and preflight.json')
    return exit_code(lines)


if __name__ == '__main__':
    sys.exit(main())
