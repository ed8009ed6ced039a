"""Check a distillation config before a long run: ``python -m kd_det.preflight``'s flags.

    python tools/preflight.py CONFIG [--teacher-ckpt CKPT] [--amp] [--iters N] ...
"""
import sys

from kd_det.preflight import main

if __name__ == '__main__':
    sys.exit(main())
