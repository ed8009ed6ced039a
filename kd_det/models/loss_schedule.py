"""When each distillation loss acts: a linear warm-up and an optional stop epoch.

A ``distill_losses`` entry may carry::

    loss_rrd=dict(type='RRDLoss', ..., warmup_iters=500, stop_epoch=280)

- ``warmup_iters=N``: the loss's weight rises linearly over the first N
  training iterations, ``(iter + 1) / N`` at 0-based iteration ``iter``, then
  stays 1 (default 0: no warm-up).
- ``stop_epoch=E``: the loss is off from 0-based epoch E on, i.e. it acts in
  the first E epochs (default None: never stops). The convention of mmdet's
  ``PipelineSwitchHook(switch_epoch=E)``, so RTMDet-style recipes can stop
  distilling when the strong augmentation stops, as mmyolo does.

The factor is a function of the iteration and epoch that mmengine's
``RuntimeInfoHook`` publishes in the ``MessageHub`` before every iteration,
which ``--resume`` restores: a resumed run continues the schedule exactly.
Outside a training loop (no runtime info: a standalone ``loss()`` call, the
analysis tools) every loss has its full weight.
"""
import logging
from typing import NamedTuple, Optional

from mmengine.logging import MessageHub, print_log


class LossSchedule(NamedTuple):
    """Warm-up length (iterations) and stop epoch (0-based, exclusive) of one loss."""
    warmup_iters: int = 0
    stop_epoch: Optional[int] = None

    @classmethod
    def from_cfg(cls, name: str, warmup_iters=0, stop_epoch=None) -> 'LossSchedule':
        """Check the entry's ``warmup_iters`` and ``stop_epoch``, naming the loss."""
        if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) \
                or warmup_iters < 0:
            raise ValueError(f'distill_losses[{name!r}]: warmup_iters={warmup_iters!r}, '
                             'expected an int >= 0 (iterations of linear warm-up)')
        if stop_epoch is not None and (isinstance(stop_epoch, bool)
                                       or not isinstance(stop_epoch, int) or stop_epoch < 1):
            raise ValueError(f'distill_losses[{name!r}]: stop_epoch={stop_epoch!r}, expected '
                             'None or an int >= 1 (the loss acts in epochs 0 .. stop_epoch - 1)')
        return cls(warmup_iters, stop_epoch)

    def factor(self, iteration: Optional[int], epoch: Optional[int]) -> float:
        """Weight factor in [0, 1] at 0-based ``iteration`` / ``epoch`` (None: unknown)."""
        if self.stop_epoch is not None and epoch is not None and epoch >= self.stop_epoch:
            return 0.
        if self.warmup_iters and iteration is not None and iteration < self.warmup_iters:
            return (iteration + 1) / self.warmup_iters
        return 1.

    def check_fits(self, name: str, max_iters: Optional[int], max_epochs: Optional[int]) -> None:
        """Refuse a warm-up longer than training; warn about a stop epoch past its end
        (a shortened run, e.g. ``train_cfg.max_epochs`` lowered: the loss never stops)."""
        if max_iters is not None and self.warmup_iters > max_iters:
            raise ValueError(f'distill_losses[{name!r}]: warmup_iters={self.warmup_iters} is '
                             f'longer than training (max_iters={max_iters}); the loss would '
                             'never reach its weight. Use warmup_iters <= max_iters')
        if max_epochs is not None and self.stop_epoch is not None \
                and self.stop_epoch > max_epochs:
            print_log(f'distill_losses[{name!r}]: stop_epoch={self.stop_epoch} is past the end '
                      f'of training (max_epochs={max_epochs}): the loss acts in every epoch',
                      logger='current', level=logging.WARNING)


def training_progress():
    """``(iteration, epoch, max_iters, max_epochs)`` of the running training loop, as
    mmengine's RuntimeInfoHook publishes them in the MessageHub; Nones outside one."""
    hub = MessageHub.get_current_instance()
    return tuple(hub.get_info(key) for key in ('iter', 'epoch', 'max_iters', 'max_epochs'))
