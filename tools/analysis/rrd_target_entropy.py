"""Measure how peaked RRD's teacher target is on real teacher features (no training).

    python tools/analysis/rrd_target_entropy.py CONFIG --checkpoint TEACHER [--images 200]
        [--epochs 2] [--taus 0.02 0.05 0.1] [--excludes none self image]
        [--data-root DIR] [--batch-size 8] [--seed 0]

CONFIG is an RRD distillation config (e.g.
configs/demo/rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py); TEACHER the teacher checkpoint
(e.g. checkpoints/demo_teacher_r34-half_shapes.pth). Only the
teacher runs, forward only, on the first ``--images`` images of the config's training set
(``--data-root`` overrides its data root), through the training pipeline (random flips) in a
random order per epoch, ``--batch-size`` images a step, as training feeds RRDLoss. For every
(``exclude``, ``teacher_tau``) pair an RRDLoss built from the config (same seed, so the same
teacher head) runs the teacher side of each step, memory updates included, and the script
prints the mean over steps of the target's entropy (nats; its maximum is log K for K related
entries), the weight on each box's own entry and the largest weight, per epoch: from the
second epoch on a memory longer than an epoch's boxes holds the previous epoch's copies.

``finest_scale`` and ``strides`` come from the loss config, else from the student (its RoI
extractor and its RPN anchor generator), as the distiller derives them.
"""
import argparse
import copy
import os.path as osp
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmdet.registry import DATASETS, MODELS

from kd_det.checkpoint import safe_load
from kd_det.losses.rrd import RRDLoss

STATS = ('entropy', 'self_weight', 'max_weight')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='RRD distillation config')
    parser.add_argument('--checkpoint', required=True, help='teacher checkpoint')
    parser.add_argument('--images', type=int, default=200, help='training images used')
    parser.add_argument('--epochs', type=int, default=2, help='passes over the images')
    parser.add_argument('--taus', type=float, nargs='+', default=[0.02, 0.05, 0.1],
                        help='teacher temperatures')
    parser.add_argument('--excludes', nargs='+', default=['none', 'self', 'image'],
                        choices=['none', 'self', 'image'])
    parser.add_argument('--data-root', help="override the config's data root")
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    for name in ('images', 'epochs', 'batch_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    return args


def rrd_config(cfg: Config) -> Tuple[dict, Optional[List[int]]]:
    """The config's RRDLoss arguments (finest_scale and strides derived from the student
    when the loss config leaves them out, as the distiller does) and its levels."""
    losses = [dict(c) for c in cfg.model.distill_losses.values() if c['type'] == 'RRDLoss']
    if len(losses) != 1:
        raise ValueError(f'expected one RRDLoss in model.distill_losses, got {len(losses)}')
    loss = losses[0]
    loss.pop('type')
    levels = loss.pop('levels', None)
    student = cfg.model.student
    if loss.get('finest_scale') is None:
        loss['finest_scale'] = student.roi_head.bbox_roi_extractor.finest_scale
    if loss.get('strides') is None:
        strides = student.rpn_head.anchor_generator.strides
        loss['strides'] = [strides[lvl] for lvl in (levels or range(len(strides)))]
    return loss, levels


def build_teacher(cfg: Config, checkpoint: str) -> torch.nn.Module:
    teacher_cfg = Config.fromfile(cfg.model.teacher_config)
    teacher = MODELS.build(teacher_cfg.model)
    state = safe_load(checkpoint, map_location='cpu')
    state = state.get('state_dict', state)
    teacher.load_state_dict({k: v.float() for k, v in state.items()})
    return teacher.eval()


def measure(args: argparse.Namespace) -> Dict[tuple, Dict[int, Dict[str, float]]]:
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    teacher = build_teacher(cfg, args.checkpoint)
    loss_cfg, levels = rrd_config(cfg)
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    if args.data_root:
        dataset_cfg.data_root = args.data_root.rstrip('/') + '/'
    dataset_cfg.indices = args.images
    dataset = DATASETS.build(dataset_cfg)

    losses = {}
    for exclude in args.excludes:
        for tau in args.taus:
            torch.manual_seed(args.seed)  # the same teacher head for every setting
            losses[exclude, tau] = RRDLoss(**dict(loss_cfg, exclude=exclude, teacher_tau=tau))
    sums = defaultdict(lambda: defaultdict(float))
    counts = defaultdict(int)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order), args.batch_size):
            data = teacher.data_preprocessor(
                pseudo_collate([dataset[i] for i in order[start:start + args.batch_size]]),
                training=True)
            with torch.no_grad():
                feats = teacher.extract_feat(data['inputs'])
            feats = [feats[lvl] for lvl in (levels or range(len(feats)))]
            for key, loss in losses.items():
                stats = loss.measure_teacher_target(feats, data['data_samples'])
                if stats['rows']:  # steps with something to relate to
                    for name in STATS:
                        sums[key, epoch][name] += stats[name]
                    counts[key, epoch] += 1
        print(f'epoch {epoch + 1}: memory {int(next(iter(losses.values())).queue_len)} '
              'entries', flush=True)
    return {key: {epoch: {name: sums[key, epoch][name] / max(counts[key, epoch], 1)
                          for name in STATS} for epoch in range(args.epochs)}
            for key in losses}


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            sys.exit(f'rrd_target_entropy: file not found: {path!r}')
    results = measure(args)
    print(f'\n{"exclude":8s} {"tau_t":>6s} {"epoch":>5s} {"entropy":>8s} {"self w":>7s} '
          f'{"max w":>6s}')
    for (exclude, tau), per_epoch in results.items():
        for epoch, stats in per_epoch.items():
            print(f'{exclude:8s} {tau:6.3f} {epoch + 1:5d} {stats["entropy"]:8.3f} '
                  f'{stats["self_weight"]:7.3f} {stats["max_weight"]:6.3f}')


if __name__ == '__main__':
    main()
