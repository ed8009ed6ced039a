"""What the distiller does with a NaN/inf distillation term: the ``nonfinite`` policy.

``'error'`` raises, naming the loss and level. ``'skip'`` replaces the term by a zero
built from the loss's own parameters and the connectors' (``p * 0``, not from the
non-finite value: NaN * 0 is NaN), so every parameter still gets a gradient, zero,
and DDP with ``find_unused_parameters=False`` goes on even when only one rank skips.
``'auto'`` (default) is ``'error'`` unless the forward runs under autocast, as
mmengine's ``AmpOptimWrapper`` (``--amp``) runs it: then the term is left in the loss,
its gradients are not finite, and the wrapper's loss scaler skips the optimizer step
(on every rank: DDP sums the gradients) and lowers its scale, as it does for the
student's own fp16 overflows.

A step with a non-finite term under ``'skip'`` or ``'auto'`` (AMP) is logged and
counted (``nonfinite_steps`` in the training log); the ``limit``-th consecutive
such step raises, naming the loss and level: a run whose distillation loss stays
non-finite has diverged, and skipping more steps would hide it (each skipped AMP
step also halves the dynamic loss scale).
"""
from typing import Callable, Dict, List, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor

NONFINITE_MODES = ('auto', 'error', 'skip')
#: The log key of the number of steps with a non-finite distillation term (no ``loss``
#: in the name: mmengine logs it and does not add it to the loss).
LOG_KEY = 'nonfinite_steps'


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ('cuda', 'cpu', ...)."""
    try:
        return torch.is_autocast_enabled(device_type)  # torch >= 2.4
    except TypeError:  # torch 2.1-2.3: no argument, CUDA only; CPU has its own query
        if device_type == 'cpu':
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


class NonFinitePolicy:
    """Checks a step's distillation terms and applies ``mode`` to the non-finite ones.

    Args:
        mode: one of :data:`NONFINITE_MODES`.
        limit: under ``'skip'`` and ``'auto'`` with AMP, this many consecutive steps
            with a non-finite term stop the run (raise).
    """

    def __init__(self, mode: str = 'auto', limit: int = 10) -> None:
        if mode not in NONFINITE_MODES:
            raise ValueError(f'nonfinite={mode!r} is not one of {list(NONFINITE_MODES)}')
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f'nonfinite_limit={limit!r}, expected an int >= 1 (the number '
                             'of consecutive steps with a non-finite term that stop the run)')
        self.mode, self.limit = mode, limit
        self.consecutive = 0  # steps in a row with a non-finite term
        self.total = 0  # steps with a non-finite term so far

    def resolve(self, device_type: str) -> str:
        """``'error'``, ``'skip'`` or ``'scaler'`` (left to the AMP loss scaler)."""
        if self.mode != 'auto':
            return self.mode
        return 'scaler' if autocast_enabled(device_type) else 'error'

    def apply(self, terms: List[Tuple[str, str, Tensor]],
              zero: Callable[[str], Tensor]) -> List[Tensor]:
        """The values to add up, one per ``(loss name, where, value)`` term.

        ``zero(name)``: a graph-connected 0 over loss ``name``'s parameters.
        """
        if not terms:
            return []
        # One host sync for all terms, not one per level.
        finite = torch.isfinite(torch.stack([v.detach().float() for _, _, v in terms]))
        if bool(finite.all()):
            self.consecutive = 0
            return [value for _, _, value in terms]
        culprits = ', '.join(f'{n} ({where})' for (n, where, _), ok in zip(terms, finite)
                             if not ok)
        mode = self.resolve(terms[0][2].device.type)
        if mode == 'error':
            raise FloatingPointError(
                f'non-finite distillation loss: {culprits}. Lower the learning rate or loss '
                "weight, or set nonfinite='skip'.")
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.limit:
            raise FloatingPointError(
                f'non-finite distillation loss in {self.consecutive} consecutive steps '
                f'(nonfinite_limit={self.limit}), the last: {culprits}. The run has '
                'diverged: lower the learning rate or the loss weight.')
        action = ('dropped from this step' if mode == 'skip' else
                  'left in the loss: the AMP loss scaler skips this step')
        print_log(f'non-finite distillation loss: {culprits}; {action} ({self.consecutive} '
                  f'consecutive, {self.total} in all; the run stops at '
                  f'{self.limit} consecutive)', logger='current', level=30)
        if mode == 'scaler':
            return [value for _, _, value in terms]
        return [value if ok else zero(name) for (name, _, value), ok in zip(terms, finite)]

    def log_vars(self) -> Dict[str, Tensor]:
        """``{'nonfinite_steps': count}`` once a step had a non-finite term, else ``{}``."""
        return {LOG_KEY: torch.tensor(float(self.total))} if self.total else {}
