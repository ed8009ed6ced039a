"""Evaluate a checkpoint: ``python -m kd_det.test``'s flags.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] ...
"""
from kd_det.test import main

if __name__ == '__main__':
    main()
