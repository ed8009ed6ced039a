"""Feature-mimic (FitNet-style) MSE loss between student and teacher features."""
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmdet.registry import MODELS

from .receives import Receives
from .utils import check_non_negative, feature_pair_loss


def feature_mse_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over (N, C, H, W) of (student - teacher)^2."""
    return F.mse_loss(student, teacher)


@MODELS.register_module()
class FeatureMSELoss(nn.Module):
    """loss_weight * mean squared error between student and teacher features (N, C, H, W).

    Computed in float32 even under autocast; the teacher is treated as a constant.
    """

    receives = Receives()  # forward(student, teacher) per level or on rows, equal shapes

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student, teacher: (N, C, H, W) features. Returns the weighted scalar loss."""
        return feature_pair_loss('FeatureMSELoss', feature_mse_loss, student, teacher, self.loss_weight)
