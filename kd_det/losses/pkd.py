"""PKD loss (Cao et al., NeurIPS 2022): MSE between per-channel standardised features."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmdet.registry import MODELS
from .utils import as_float32_pair, check_feature_pair, check_non_negative, float32_no_autocast


def standardize_channels(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each channel of ``x`` (N, C, H, W) over (N, H, W): (x - mean) / (std + eps).

    std is the unbiased one (as MMRazor's ``torch.std``), biased when a channel has a single
    value; a constant channel becomes zeros with a finite gradient.
    """
    count = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1 if count > 1 else 0, keepdim=True)
    # clamp before sqrt: a zero variance must not give an infinite gradient
    return (x - mean) / (var.clamp_min(1e-24).sqrt() + eps)


def pkd_loss(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """MSE / 2 between per-channel standardised student and teacher (N, C, H, W)."""
    return F.mse_loss(standardize_channels(student, eps), standardize_channels(teacher, eps)) / 2


@MODELS.register_module()
class PKDLoss(nn.Module):
    """PKD: loss_weight * MSE / 2 of channel-standardised features (N, C, H, W).

    Matches MMRazor's ``PKDLoss`` (its COCO configs use loss_weight 6 on FPN levels 0..3).
    Computed in float32 even under autocast; the teacher is treated as a constant.
    """

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        self.eps = float(eps)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student, teacher: (N, C, H, W) features. Returns the weighted scalar loss."""
        check_feature_pair(student, teacher, 'PKDLoss')
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            return self.loss_weight * pkd_loss(student, teacher, self.eps)
