"""kd_det: knowledge distillation for MMDetection 3.x.

Importing this package registers its losses, detectors and hooks in mmdet's
registries (scope ``mmdet``) and allow-lists the few types that mmengine
writes into checkpoints, so ``torch.load(weights_only=True)`` can read them.
It also lets mmengine read ``_base_ = 'kd_det::ssim/...'`` (see configs.py).
"""
from .version import __version__
from .configs import register_package
from . import checkpoint  # noqa: F401  (safe checkpoint loading)
from . import losses  # noqa: F401
from . import models  # noqa: F401
from . import engine  # noqa: F401

register_package()

__all__ = ['__version__']
