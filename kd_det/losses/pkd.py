"""PKD loss (Cao et al., NeurIPS 2022): MSE between per-channel standardised features.

Standardising every channel over (N, H, W) and taking the MSE only depends on per-channel
second moments: with ``d_s = s - mean(s)``, ``d_t = t - mean(t)`` and ``k = N H W - 1``
(unbiased, as MMRazor's ``torch.std``),

    sum over a channel of ((d_s / (std_s + eps) - d_t / (std_t + eps))^2)
        = a^2 S_ss + b^2 S_tt - 2 a b S_st,   a = 1 / (std_s + eps),  b = 1 / (std_t + eps),

where ``S_xy = sum(d_x * d_y)`` and ``std_x = sqrt(S_xx / k)``. :func:`pkd_loss` computes the
loss in this closed form and its gradient ``A d_s + B d_t`` (one coefficient pair per channel)
in a custom backward: a few passes over the features instead of the standardised copies and
their autograd graph (measured 9x FeatureMSELoss before, see ``tools/analysis/
benchmark_losses.py``).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from mmdet.registry import MODELS

from .receives import Receives
from .utils import check_non_negative, feature_pair_loss

# A channel's variance is clamped to this before the square root, so a constant channel has
# a finite standardisation (zeros) and a finite gradient.
MIN_VARIANCE = 1e-24


def _scale_and_derivative(sq_sum: Tensor, dof: int, eps: float) -> Tuple[Tensor, Tensor]:
    """``a = 1 / (sqrt(S / dof) + eps)`` and ``da / dS`` per channel, from the (C, ) sums of
    squared deviations ``S`` (float64); ``da / dS = 0`` where the variance is clamped."""
    var = sq_sum / dof
    std = var.clamp_min(MIN_VARIANCE).sqrt()
    scale = 1 / (std + eps)
    derivative = torch.where(var >= MIN_VARIANCE, -scale**2 / (2 * dof * std),
                             torch.zeros_like(std))
    return scale, derivative


class _PKDFunction(torch.autograd.Function):
    """Closed-form PKD loss of (N, C, H, W) ``student`` and ``teacher`` with its gradient."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, eps: float) -> Tensor:
        n, c, h, w = student.shape
        centred = torch.stack((student, teacher), dim=2)  # (N, C, 2, H, W)
        centred -= centred.mean(dim=(0, 3, 4), keepdim=True)
        rows = centred.view(n * c, 2, h * w)
        # (C, 2, 2) per-channel [[S_ss, S_st], [S_st, S_tt]]
        gram = torch.bmm(rows, rows.transpose(1, 2)).view(n, c, 2, 2).sum(0).double()
        s_ss, s_tt, s_st = gram[:, 0, 0], gram[:, 1, 1], gram[:, 0, 1]
        dof = max(n * h * w - 1, 1)
        a, da = _scale_and_derivative(s_ss, dof, eps)
        b, db = _scale_and_derivative(s_tt, dof, eps)
        norm = 2 * student.numel()
        loss = (a**2 * s_ss + b**2 * s_tt - 2 * a * b * s_st).sum() / norm
        # d loss / d student = (A_s d_s + B d_t) / norm, d loss / d teacher = (A_t d_t + B d_s)
        coef_s = (2 * a**2 + 4 * (a * s_ss - b * s_st) * da) / norm
        coef_t = (2 * b**2 + 4 * (b * s_tt - a * s_st) * db) / norm
        coef_cross = -2 * a * b / norm
        coefs = torch.stack((coef_s, coef_t, coef_cross)).to(student.dtype)
        ctx.save_for_backward(centred, coefs)
        return loss.to(student.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], None]:
        centred, coefs = ctx.saved_tensors
        coefs = (coefs * grad).view(3, 1, -1, 1, 1)
        d_s, d_t = centred[:, :, 0], centred[:, :, 1]
        grad_s = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_s = torch.addcmul(d_s * coefs[0], d_t, coefs[2])
        if ctx.needs_input_grad[1]:
            grad_t = torch.addcmul(d_t * coefs[1], d_s, coefs[2])
        return grad_s, grad_t, None


def pkd_loss(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """MSE / 2 between per-channel standardised student and teacher (N, C, H, W).

    Each channel is standardised over (N, H, W) as ``(x - mean) / (std + eps)`` with the
    unbiased std (biased when a channel has a single value; a constant channel standardises
    to zeros with a finite gradient). Computed in closed form (see the module docstring).
    """
    return _PKDFunction.apply(student, teacher, float(eps))


@MODELS.register_module()
class PKDLoss(nn.Module):
    """PKD: loss_weight * MSE / 2 of channel-standardised features (N, C, H, W).

    Matches MMRazor's ``PKDLoss`` (its COCO configs use loss_weight 6 on FPN levels 0..3).
    Computed in float32 even under autocast; the teacher is treated as a constant.
    """

    receives = Receives()  # forward(student, teacher) per level, (N, C, H, W) each

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        self.eps = float(eps)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student, teacher: (N, C, H, W) features. Returns the weighted scalar loss."""
        return feature_pair_loss('PKDLoss', pkd_loss, student, teacher, self.loss_weight, self.eps)
