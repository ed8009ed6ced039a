"""kd_det: knowledge distillation for MMDetection 3.x.

Importing this package registers its losses, detectors and hooks in mmdet's
registries (scope ``mmdet``) and makes the changes to torch and mmengine that
:func:`kd_det.integration.install` lists (safe checkpoint loading for local
paths and URLs, the ``atomic_local`` file backend, ``kd_det::`` configs); see
docs/checkpoint_safety.md.
"""
from .version import __version__
from .supported import check_mmcv_build, check_versions

check_versions()  # before anything else fails obscurely on an unsupported stack
check_mmcv_build()

from . import losses  # noqa: F401,E402  (registers the losses)
from . import models  # noqa: F401,E402  (registers FeatureDistillDetector)
from . import engine  # noqa: F401,E402  (registers the hooks)
from .integration import install  # noqa: E402

install()

__all__ = ['__version__']
