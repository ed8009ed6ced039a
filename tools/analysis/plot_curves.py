"""Plot losses (per iteration) and COCO mAP (per epoch) of one or more runs, overlaid.

    python tools/analysis/plot_curves.py WORK_DIR [WORK_DIR ...] --out curves.png
        [--labels baseline ssim ...] [--keys loss loss_ssim ...]

Each WORK_DIR is a tools/train.py work dir (its newest */vis_data/scalars.json is
read) or a scalars.json file.
"""
import argparse
import os.path as osp
import sys

from kd_det.analysis.curves import plot_curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dirs', nargs='+', help='work dirs or scalars.json files')
    parser.add_argument('--out', required=True, help='output PNG')
    parser.add_argument('--labels', nargs='+', help='one label per work dir')
    parser.add_argument('--keys', nargs='+', help='train scalars to plot (default: all loss*)')
    parser.add_argument('--title', default='')
    args = parser.parse_args()
    labels = args.labels or [osp.basename(osp.normpath(d)) for d in args.work_dirs]
    if len(labels) != len(args.work_dirs):
        sys.exit(f'--labels has {len(labels)} names for {len(args.work_dirs)} work dirs')
    try:
        keys = plot_curves(dict(zip(labels, args.work_dirs)), args.out, args.keys, args.title)
    except FileNotFoundError as err:
        sys.exit(f'plot_curves: {err}')
    print(f'wrote {args.out} ({", ".join(keys)} and coco/bbox_mAP)')


if __name__ == '__main__':
    main()
