"""Everything importing kd_det changes outside kd_det, in one function: :func:`install`.

``kd_det/__init__.py`` calls it once; docs/checkpoint_safety.md lists the
changes for users. Registering kd_det's losses, detector and hooks in mmdet's
registries is not here: as in mmdet, the ``@register_module()`` decorators of
``kd_det.losses``, ``kd_det.models`` and ``kd_det.engine`` do it on import.
"""
from mmengine.fileio import register_backend

from .checkpoint import install_safe_loading
from .configs import register_package
from .engine.safe_checkpoint_hook import BACKEND_NAME, AtomicLocalBackend


def install() -> None:
    """Apply kd_det's changes to torch and mmengine (idempotent).

    * torch: ``add_safe_globals`` allow-lists the types mmengine writes into
      checkpoints (``kd_det.checkpoint.MMENGINE_SAFE_GLOBALS``).
    * mmengine ``CheckpointLoader``: local paths (scheme ``''``) load with
      ``kd_det.checkpoint.safe_load`` (``weights_only=True``).
    * ``mmengine.runner.checkpoint.load_url``: ``kd_det.checkpoint.safe_load_url``,
      for ``http(s)://``, ``torchvision://``, ``open-mmlab://`` and ``mmcls://``.
    * mmengine file backends: ``'atomic_local'``, SafeCheckpointHook's atomic writer.
    * mmengine ``MODULE2PACKAGE``: ``'kd_det'``, so configs can inherit ``kd_det::``.
    """
    install_safe_loading()
    register_backend(BACKEND_NAME, AtomicLocalBackend, force=True)
    register_package()
