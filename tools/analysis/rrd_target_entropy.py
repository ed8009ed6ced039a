"""Check a teacher and a dataset for RRD before training: class signal and target shape.

    python tools/analysis/rrd_target_entropy.py CONFIG --checkpoint TEACHER [--images 300]
        [--epochs 1] [--embeddings box-mean roi-embed] [--taus 0.05] [--excludes image]
        [--data-root DIR] [--batch-size 8] [--seed 0]

CONFIG is a distillation config (its teacher, training set and RRDLoss settings are used;
e.g. configs/demo/rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py), TEACHER the teacher
checkpoint (e.g. checkpoints/demo_teacher_r34-half_shapes.pth). Only the teacher runs,
forward, on the ground-truth boxes of the first ``--images`` training images (training
pipeline, a random order per epoch, ``--batch-size`` images a step). Two embeddings of each
box are compared:

- ``box-mean``: the mean of the teacher's 7x7 RoIAlign of the box on the FPN level its RoI
  extractor maps it to (what RRD related before ``source='roi_embed'``);
- ``roi-embed``: the input of the teacher box head's classifier on the box
  (``source='roi_embed'``).

For each it prints the leave-one-image-out k-NN class accuracy (cosine; chance is about
the largest class's share, printed too), and for every (``exclude``, ``teacher_tau``) an
RRDLoss with the config's other settings runs the teacher side of every step (memory
included) and the mean over steps of its target is printed per epoch: entropy (nats; log K
for a uniform target over K entries), weight on the box's own entry, largest weight, and
**purity**, the weight on memory entries of the box's own class.
"""
import argparse
import copy
import os.path as osp
import sys
from collections import defaultdict
from typing import Dict, List, Optional

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmdet.registry import DATASETS

from kd_det.analysis.class_signal import knn_accuracy, target_purity
from kd_det.losses.gt_boxes import gt_rois, image_id_number
from kd_det.losses.rrd import RRDLoss
from kd_det.losses.rrd_memory import enqueue
from kd_det.models.distill_sources import teacher_roi_outputs
from kd_det.models.teacher import build_teacher, teacher_model_cfg

STATS = ('entropy', 'self_weight', 'max_weight', 'purity')
EMBEDDINGS = ('box-mean', 'roi-embed')
# RRDLoss options of the config that this tool sets itself
OWN = ('type', 'source', 'levels', 'warmup_iters', 'stop_epoch', 'in_channels',
       'teacher_channels', 'num_levels', 'strides', 'finest_scale', 'mode', 'exclude',
       'teacher_tau', 'num_negatives', 'loss_weight')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='distillation config (teacher, data, RRD settings)')
    parser.add_argument('--checkpoint', required=True, help='teacher checkpoint')
    parser.add_argument('--images', type=int, default=300, help='training images used')
    parser.add_argument('--epochs', type=int, default=1, help='passes over the images')
    parser.add_argument('--embeddings', nargs='+', default=list(EMBEDDINGS),
                        choices=EMBEDDINGS)
    parser.add_argument('--taus', type=float, nargs='+', default=[0.05],
                        help='teacher temperatures')
    parser.add_argument('--excludes', nargs='+', default=['image'],
                        choices=['none', 'self', 'image'])
    parser.add_argument('--knn', type=int, nargs='+', default=[1, 10], help='k of k-NN')
    parser.add_argument('--data-root', help="override the config's data root")
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    for name in ('images', 'epochs', 'batch_size'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    return args


def rrd_options(cfg: Config) -> dict:
    """The config's RRDLoss options other than those this tool sets (defaults if none)."""
    losses = [dict(c) for c in cfg.model.distill_losses.values() if c['type'] == 'RRDLoss']
    if len(losses) > 1:
        raise ValueError(f'expected at most one RRDLoss in model.distill_losses, got '
                         f'{len(losses)}')
    return {k: v for k, v in (losses[0] if losses else {}).items() if k not in OWN}


@torch.no_grad()
def box_embeddings(teacher, batch: dict) -> Dict[str, torch.Tensor]:
    """``{embedding: (K, D)}`` of the batch's K ground-truth boxes, and their ``'rois'``."""
    feats = teacher.extract_feat(batch['inputs'])
    rois = gt_rois(batch['data_samples'], feats[0].device)
    extractor = teacher.roi_head.bbox_roi_extractor
    mean = extractor(feats[:extractor.num_inputs], rois).mean(dim=(2, 3))
    embed = teacher_roi_outputs(teacher, feats, rois, embed=True)[2]
    return {'box-mean': mean, 'roi-embed': embed, 'rois': rois}


def measure(args: argparse.Namespace):
    """``(knn {embedding: {k: acc}}, target stats {(emb, exclude, tau): {epoch: {stat}}},
    largest class share)``."""
    cfg = Config.fromfile(args.config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    teacher = build_teacher(teacher_model_cfg(cfg.model.teacher_config), args.checkpoint)
    options = rrd_options(cfg)
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    if args.data_root:
        dataset_cfg.data_root = args.data_root.rstrip('/') + '/'
    dataset_cfg.indices = args.images
    dataset = DATASETS.build(dataset_cfg)

    losses, label_queues = {}, {}
    sums, counts = defaultdict(lambda: defaultdict(float)), defaultdict(int)
    first_epoch = defaultdict(list)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        order = torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, len(order), args.batch_size):
            batch = teacher.data_preprocessor(
                pseudo_collate([dataset[i] for i in order[start:start + args.batch_size]]),
                training=True)
            samples = batch['data_samples']
            labels = torch.cat([s.gt_instances.labels for s in samples])
            found = box_embeddings(teacher, batch)
            if epoch == 0:
                first_epoch['labels'].append(labels)
                first_epoch['images'].append(torch.tensor([image_id_number(s.img_id) for s in samples])
                                             [found['rois'][:, 0].long()])
            for name in args.embeddings:
                rows = found[name]
                if epoch == 0:
                    first_epoch[name].append(rows)
                for exclude in args.excludes:
                    for tau in args.taus:
                        key = (name, exclude, tau)
                        if key not in losses:
                            torch.manual_seed(args.seed)  # the same head for every setting
                            losses[key] = RRDLoss(**dict(
                                options, in_channels=rows.size(1),
                                teacher_channels=rows.size(1), exclude=exclude,
                                teacher_tau=tau, num_negatives=None))
                            size = losses[key].queue.size(0)
                            label_queues[key] = (torch.zeros(size, 0), torch.full(
                                (size, ), -1, dtype=torch.long), torch.zeros((), dtype=torch.long),
                                torch.zeros((), dtype=torch.long))
                        stats = losses[key].measure_teacher_target(rows, samples, found['rois'])
                        # mirror the memory's writes with the classes of its entries
                        queue, queue_labels, ptr, length = label_queues[key]
                        enqueue(queue, queue_labels, ptr, length, rows.new_zeros(len(rows), 0),
                                labels)
                        stats['purity'] = target_purity(stats['target'], labels,
                                                        queue_labels[:int(length)])
                        if stats['rows']:
                            for stat in STATS:
                                sums[key, epoch][stat] += stats[stat]
                            counts[key, epoch] += 1
        print(f'epoch {epoch + 1}: {sum(len(x) for x in first_epoch["labels"])} boxes per '
              'epoch', flush=True)
    labels, images = torch.cat(first_epoch['labels']), torch.cat(first_epoch['images'])
    knn = {name: {k: knn_accuracy(torch.cat(first_epoch[name]), labels, images, k)
                  for k in args.knn} for name in args.embeddings}
    target = {key: {epoch: {s: sums[key, epoch][s] / max(counts[key, epoch], 1) for s in STATS}
                    for epoch in range(args.epochs)} for key in losses}
    share = torch.bincount(labels).max().item() / len(labels)
    return knn, target, share


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    for path in (args.config, args.checkpoint):
        if not osp.isfile(path):
            sys.exit(f'rrd_target_entropy: file not found: {path!r}')
    knn, target, share = measure(args)
    print(f'\nk-NN class accuracy (leave one image out; the largest class is {share:.3f} '
          'of the boxes)')
    print(f'{"embedding":10s} ' + ' '.join(f'{k:>2d}-NN' for k in args.knn))
    for name, accs in knn.items():
        print(f'{name:10s} ' + ' '.join(f'{acc:5.3f}' for acc in accs.values()))
    print(f'\n{"embedding":10s} {"exclude":8s} {"tau_t":>6s} {"epoch":>5s} {"entropy":>8s} '
          f'{"self w":>7s} {"max w":>6s} {"purity":>7s}')
    for (name, exclude, tau), per_epoch in target.items():
        for epoch, stats in per_epoch.items():
            print(f'{name:10s} {exclude:8s} {tau:6.3f} {epoch + 1:5d} {stats["entropy"]:8.3f} '
                  f'{stats["self_weight"]:7.3f} {stats["max_weight"]:6.3f} '
                  f'{stats["purity"]:7.3f}')


if __name__ == '__main__':
    main()
