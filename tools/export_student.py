"""Export the student of a distillation checkpoint as a plain mmdet checkpoint.

    python tools/export_student.py work_dirs/RUN/epoch_24.pth student.pth [--force]

The output loads into the student's own mmdet config, e.g. with mmdet's
``tools/test.py STUDENT_CONFIG student.pth``.
"""
import argparse
import sys

from kd_det.checkpoint import CheckpointError
from kd_det.export import export_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint', help='distillation checkpoint (from tools/train.py)')
    parser.add_argument('out', help='output path of the student checkpoint')
    parser.add_argument('--force', action='store_true', help='overwrite OUT if it exists')
    args = parser.parse_args()
    try:
        counts = export_student(args.checkpoint, args.out, overwrite=args.force)
    except (FileNotFoundError, FileExistsError, CheckpointError) as err:
        sys.exit(f'export_student: {err}')
    print(f'wrote {args.out}: {counts["kept"]} student tensors '
          f'({counts["dropped"]} connector/loss-head/other tensors dropped)')


if __name__ == '__main__':
    main()
