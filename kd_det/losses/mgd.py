"""MGD, Masked Generative Distillation (Yang et al., ECCV 2022) on neck levels.

What the loss receives (:class:`MGDLoss`): every paired neck level at once, student
(N, C, H_l, W_l) (after the distiller's connectors, the official 1x1 ``align``) and
teacher (N, C, H_l, W_l). It owns one generation block per level (Conv3x3 -> ReLU ->
Conv3x3, C -> C), as the official code has one loss module per FPN level.

Per level: a random spatial mask ``M`` (N, 1, H, W), redrawn every call and shared by the
channels, is 0 where ``u > 1 - lambda_mgd`` (``u ~ U(0, 1)``) and 1 elsewhere; the loss is
``alpha_mgd * sum((G(F_s * M) - F_t)^2) / N``. As yzd-v/MGD,
``det/mmdet/distillation/losses/mgd.py`` at 2c9da0b28625eb948db57afc02c824452c3910fe.
"""
from typing import List

import torch
import torch.nn as nn
from mmdet.registry import MODELS
from torch import Tensor

from .receives import Receives
from .utils import check_level_lists, check_non_negative, float32_no_autocast, level_channels


def mgd_loss(student: Tensor, teacher: Tensor, generation: nn.Module, mask: Tensor) -> Tensor:
    """``sum((generation(student * mask) - teacher)^2) / N`` of (N, C, H, W) features and
    an (N, 1, H, W) mask."""
    return (generation(student * mask) - teacher).pow(2).sum() / student.size(0)


def random_mask(feat: Tensor, lambda_mgd: float) -> Tensor:
    """(N, 1, H, W) float mask of (N, C, H, W) ``feat``: 0 where ``u > 1 - lambda_mgd``,
    1 elsewhere, ``u`` uniform on [0, 1) drawn from torch's generator on ``feat``'s device."""
    n, _, h, w = feat.shape
    u = torch.rand((n, 1, h, w), device=feat.device)
    return (u <= 1 - lambda_mgd).float()


@MODELS.register_module()
class MGDLoss(nn.Module):
    """MGD on every paired neck level: ``loss_weight * alpha_mgd * sum over levels of
    sum((G_l(F_s * M) - F_t)^2) / N``.

    Receives ``forward([student levels], [teacher levels])``, levels (N, C, H_l, W_l) of
    equal channels.

    Args:
        in_channels, teacher_channels (int): level channels (derived; must be equal).
        num_levels (int): levels the loss is called with (derived).
        alpha_mgd (float): weight. Official detection configs: 2e-5 (RetinaNet,
            RepPoints, SOLO), 5e-7 (Cascade Mask R-CNN -> Faster/Mask R-CNN).
        lambda_mgd (float): masked ratio, in [0, 1]. Official: 0.65, 0.45 respectively.
        loss_weight (float): multiplies the whole loss. Defaults to 1.0.
    """

    receives = Receives(all_levels=True, sources=('neck', ),
                        derived=('in_channels', 'teacher_channels', 'num_levels'))

    def __init__(self,
                 in_channels=None,
                 teacher_channels=None,
                 num_levels=None,
                 alpha_mgd: float = 0.00002,
                 lambda_mgd: float = 0.65,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.channels, self.num_levels = level_channels('MGDLoss', in_channels,
                                                        teacher_channels, num_levels)
        if not 0 <= lambda_mgd <= 1:
            raise ValueError(f'MGDLoss: lambda_mgd (the masked ratio) must be in [0, 1], '
                             f'got {lambda_mgd!r}')
        self.alpha_mgd = check_non_negative(alpha_mgd, 'MGDLoss alpha_mgd')
        self.lambda_mgd = float(lambda_mgd)
        self.loss_weight = check_non_negative(loss_weight, 'MGDLoss loss_weight')
        c = self.channels
        self.generation = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(c, c, 3, padding=1)) for _ in range(self.num_levels))

    def forward(self, student: List[Tensor], teacher: List[Tensor]) -> Tensor:
        """student, teacher: lists of (N, C, H_l, W_l) levels. Returns the weighted scalar
        loss, summed over the levels; each level's mask is drawn anew."""
        check_level_lists('MGDLoss', student, teacher, self.num_levels, self.channels)
        total = student[0].new_zeros((), dtype=torch.float32)
        with float32_no_autocast(student[0]):
            for s, t, generation in zip(student, teacher, self.generation):
                s, t = s.float(), t.detach().float()
                total = total + mgd_loss(s, t, generation, random_mask(s, self.lambda_mgd))
        return total * (self.alpha_mgd * self.loss_weight)
