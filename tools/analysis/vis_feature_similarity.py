"""Map where a distilled student's features match its teacher's, per FPN level.

    python tools/analysis/vis_feature_similarity.py CONFIG IMAGE [IMAGE ...]
        [--checkpoint CKPT] [--out-dir DIR] [--levels 0 1 2] [--device cpu]
        [--patch-size 16] [--cfg-options model.teacher_ckpt=teacher.pth ...]

CONFIG is a distillation config; the teacher is loaded from its ``model.teacher_ckpt``,
the student and connectors from CKPT (a distillation checkpoint from tools/train.py), or
initialised as at the start of training without --checkpoint. Writes
``DIR/<image name>_similarity.png`` per image: one row per level with the image (and the
CKA tiles), teacher and student feature energy, local SSIM and per-tile CKA
(definitions in kd_det/analysis/similarity.py).
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

from mmengine.config import Config, DictAction
from mmdet.utils import get_test_pipeline_cfg

from kd_det.analysis.similarity import (build_distill_model, image_similarity_maps,
                                        plot_similarity)
from kd_det.checkpoint import CheckpointError


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='distillation config file')
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--checkpoint', help='distillation checkpoint (default: untrained '
                        'student)')
    parser.add_argument('--out-dir', default='work_dirs/vis_feature_similarity',
                        help='where the PNGs go')
    parser.add_argument('--levels', type=int, nargs='+', help='feature levels (default all)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--patch-size', type=int, default=16,
                        help='CKA tile size (feature pixels) on large levels')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=yyy format)')
    return parser.parse_args(argv)


def out_names(images: List[str]) -> List[str]:
    """``<stem>_similarity.png`` per image, numbered where two stems collide."""
    stems = [osp.splitext(osp.basename(path))[0] for path in images]
    return [f'{stem}_similarity.png' if stems.count(stem) == 1
            else f'{stem}_{i}_similarity.png' for i, stem in enumerate(stems)]


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    prog = 'vis_feature_similarity'
    for path, what in [(args.config, 'config'), (args.checkpoint, 'checkpoint'),
                       *[(image, 'image') for image in args.images]]:
        if path is not None and not osp.isfile(path):
            sys.exit(f'{prog}: {what} not found: {path!r}')
    if args.patch_size < 1:
        sys.exit(f'{prog}: --patch-size must be positive, got {args.patch_size}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    teacher_ckpt = cfg.model.get('teacher_ckpt')
    if isinstance(teacher_ckpt, str) and '://' not in teacher_ckpt \
            and not osp.isfile(teacher_ckpt):
        sys.exit(f'{prog}: teacher checkpoint not found: {teacher_ckpt!r} (the config\'s '
                 'model.teacher_ckpt; override it with --cfg-options model.teacher_ckpt=PATH)')
    try:
        model = build_distill_model(cfg, args.checkpoint, args.device)
    except ValueError as err:
        sys.exit(f'{prog}: {args.config}: {err}')
    except (FileNotFoundError, CheckpointError) as err:
        sys.exit(f'{prog}: {err}')
    pipeline = get_test_pipeline_cfg(cfg)
    title = (f'{osp.basename(args.config)}\ncheckpoint: '
             f'{args.checkpoint or "none (untrained student)"}')
    os.makedirs(args.out_dir, exist_ok=True)
    for image, name in zip(args.images, out_names(args.images)):
        try:
            maps = image_similarity_maps(model, image, pipeline, args.levels, args.patch_size)
        except ValueError as err:
            sys.exit(f'{prog}: {err}')
        out_file = osp.join(args.out_dir, name)
        plot_similarity(maps, out_file, f'{title}\nimage: {image}')
        print(f'wrote {out_file}')


if __name__ == '__main__':
    main()
