"""Train a detector or a distillation model: ``python -m kd_det.train``'s flags.

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]] ...
"""
from kd_det.train import main

if __name__ == '__main__':
    main()
