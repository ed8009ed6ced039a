"""Train a detector or a distillation model: mmdet's ``tools/train.py`` flags.

    python -m kd_det.train CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr]
                                  [--resume [CKPT]] [--cfg-options k=v ...]
                                  [--launcher {none,pytorch,slurm,mpi}]

CONFIG is a file, which may inherit kd_det's configs by package
(``_base_ = 'kd_det::ssim/...'``: kd_det is imported before the config is
read), or a package path itself (``kd_det::NAME``, ``mmdet::NAME``).
``tools/train.py`` and ``mim train kd_det`` run this same ``main``.
"""
import argparse

from mmengine.config import Config

from kd_det.configs import read_config
from kd_det.engine.launcher import (apply_command_line, build_runner, parse_command_line,
                                     tool_parser)
from kd_det.engine.resume import find_resumable_checkpoint


def parse_args() -> argparse.Namespace:
    parser = tool_parser('Train a detector (kd_det)', 'train config file path',
                         'the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual batch size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or, without a path, from the newest '
                        'checkpoint in the work dir that loads (a truncated one is skipped '
                        'with a warning)')
    return parse_command_line(parser)


def build_config(args: argparse.Namespace) -> Config:
    """The config with the command line applied, as mmdet's tools/train.py does."""
    cfg = apply_command_line(read_config(args.config), args)
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')  # a configured one is kept
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs `auto_scale_lr = dict(enable=..., '
                               f'base_batch_size=...)` in {args.config}')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = find_resumable_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main() -> None:
    """Parse the command line, build the Runner and train."""
    cfg = build_config(parse_args())
    build_runner(cfg).train()


if __name__ == '__main__':
    main()
