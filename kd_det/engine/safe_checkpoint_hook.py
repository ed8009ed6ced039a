"""A CheckpointHook that never leaves the work dir without a complete checkpoint.

mmengine's CheckpointHook writes ``epoch_N.pth`` in place and, with
``max_keep_ckpts``, removes the oldest kept checkpoint *before* writing the new
one: a kill, a full disk or a node failure during the save leaves a truncated
file and, with ``max_keep_ckpts=1``, no complete checkpoint at all.
:class:`SafeCheckpointHook` writes every checkpoint atomically (a temporary file
in the same folder, flushed and fsync'ed, then renamed into place), and only
then points ``last_checkpoint`` at it and removes expired checkpoints. Files get
the permissions the user's umask gives, as mmengine's own saves do.
"""
import glob
import os
import os.path as osp
from pathlib import Path
from typing import Dict, Optional, Union

from mmdet.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

from ..fileio import TMP_SUFFIX, atomic_write

__all__ = ['AtomicLocalBackend', 'SafeCheckpointHook', 'TMP_SUFFIX', 'atomic_write']

#: The name kd_det registers :class:`AtomicLocalBackend` under in mmengine's file backends.
BACKEND_NAME = 'atomic_local'


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` is :func:`~kd_det.fileio.atomic_write`.

    Importing kd_det registers it as ``'atomic_local'`` (see ``kd_det/integration.py``).
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(filepath, obj)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook` (same arguments) with safe saves.

    * Checkpoints in a local ``out_dir`` (regular and ``save_best`` ones) are
      written with :func:`atomic_write`: a kill mid-save leaves the previous
      files intact plus, at worst, a ``*.kd_det.tmp`` file, which the next run's
      ``before_train`` removes. Other storage backends (and the deprecated
      ``file_client_args``) write as in mmengine.
    * ``last_checkpoint`` is updated (atomically) only after the checkpoint is
      in place, and only then are checkpoints beyond ``max_keep_ckpts`` and the
      previous best checkpoint removed.
    * A failed save (e.g. a full disk) raises an ``OSError`` naming the file and
      the free space, and stops training with the previous checkpoints intact.

    Use it in any mmdet config::

        default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self.file_client_args is not None or not isinstance(self.file_backend, LocalBackend):
            return
        self.backend_args = dict(backend=BACKEND_NAME)
        self.file_backend = AtomicLocalBackend()
        if not is_main_process():
            return
        stale = glob.glob(osp.join(glob.escape(self.out_dir), '*' + TMP_SUFFIX))
        stale.append(osp.join(runner.work_dir, 'last_checkpoint' + TMP_SUFFIX))
        for tmp in stale:
            if osp.isfile(tmp):
                os.remove(tmp)
                runner.logger.warning(f'Removed {tmp}: an unfinished save of an '
                                      'interrupted run.')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        """Save, then update ``last_checkpoint``, then remove an expired checkpoint."""
        expired = self._keep(runner, step)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt.encode())
        if expired is not None:
            self._remove(self.file_backend.join_path(self.out_dir,
                                                     self.filename_tmpl.format(expired)))

    def _keep(self, runner, step: int) -> Optional[int]:
        """Add ``step`` to the kept checkpoints; return the step that drops out, if any.

        The list is updated before saving, as mmengine does, so that the
        checkpoint records it; the dropped checkpoint is removed after saving.
        """
        if self.max_keep_ckpts <= 0 or (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            return None
        expired = None
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            expired = self.keep_ckpt_ids.popleft()
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        return expired

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine's, but a previous best checkpoint is removed after the new one is saved."""
        if not self.save_best:
            return
        previous = self._best_ckpt_paths()
        # with no previous path mmengine removes nothing before saving
        self._set_best_ckpt_paths(dict.fromkeys(previous))
        super()._save_best_checkpoint(runner, metrics)
        current = {key: path or previous[key] for key, path in self._best_ckpt_paths().items()}
        self._set_best_ckpt_paths(current)
        if not is_main_process():
            return
        for key, path in previous.items():
            if path and path != current[key] and self._remove(path):
                runner.logger.info(f'The previous best checkpoint {path} is removed')

    def _best_ckpt_paths(self) -> Dict[str, Optional[str]]:
        if len(self.key_indicators) == 1:
            return {'': self.best_ckpt_path}
        return dict(self.best_ckpt_path_dict)

    def _set_best_ckpt_paths(self, paths: Dict[str, Optional[str]]) -> None:
        if len(self.key_indicators) == 1:
            self.best_ckpt_path = paths['']
        else:
            self.best_ckpt_path_dict.update(paths)

    def _remove(self, path: str) -> bool:
        """Remove a checkpoint file or (DeepSpeed) folder; whether there was one."""
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):
            self.file_backend.rmtree(path)
        else:
            return False
        return True

