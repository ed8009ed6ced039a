"""Strip a training checkpoint to weights + dataset_meta (as mmdet's publish_model).

    python tools/publish_checkpoint.py work_dirs/RUN/epoch_16.pth out.pth [--half] [--force]

``--half`` stores floating-point tensors in float16 (half the size; they are cast back to
the model's dtype when loaded). This is how checkpoints/demo_teacher_r34-half_shapes.pth
was made.
"""
import argparse
import sys

from kd_det.checkpoint import CheckpointError
from kd_det.export import publish_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint')
    parser.add_argument('out')
    parser.add_argument('--half', action='store_true', help='float16 tensors')
    parser.add_argument('--force', action='store_true', help='overwrite OUT if it exists')
    args = parser.parse_args()
    try:
        info = publish_checkpoint(args.checkpoint, args.out, args.half, args.force)
    except (FileNotFoundError, FileExistsError, CheckpointError) as err:
        sys.exit(f'publish_checkpoint: {err}')
    print(f'wrote {args.out}: {info["tensors"]} tensors, {info["bytes"] / 2**20:.1f} MiB')


if __name__ == '__main__':
    main()
