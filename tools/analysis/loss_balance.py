"""Gradient norms of each distillation loss on the student's features, beside the detector's.

    python tools/analysis/loss_balance.py CONFIG [--checkpoint CKPT] [--batches N]
        [--cfg-options model.teacher_ckpt=PATH ...]

Runs N real training batches of CONFIG's train_dataloader through the distiller's own
loss() and prints, for every distillation loss and feature level, the norm of its gradient
on the student's features, the norm of the detector's own losses' gradient on the same
features, their ratio, and the total gradient norm against the config's clip_grad. The
first thing to run when distillation gives no gain or diverges: a ratio far above 1 means
the distillation loss drowns the detection task, far below 1 means it barely acts.
"""
import argparse

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import load_checkpoint
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import kd_det  # noqa: F401  (registers kd_det's modules, safe checkpoint loading)
from kd_det.analysis.loss_balance import balance_table, loss_balance
from kd_det.analysis.steps import train_batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--checkpoint', help='a distillation checkpoint (default: the '
                        "config's initial weights)")
    parser.add_argument('--batches', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    if args.batches < 1:
        parser.error(f'--batches must be >= 1, got {args.batches}')
    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.model.get('type') != 'FeatureDistillDetector':
        parser.error(f'{args.config} is not a FeatureDistillDetector config')
    torch.manual_seed(args.seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    batches = train_batches(cfg, model, args.batches, args.seed)
    max_norm = (cfg.optim_wrapper.get('clip_grad') or {}).get('max_norm')
    print(balance_table(loss_balance(model, batches, max_norm), max_norm))


if __name__ == '__main__':
    main()
