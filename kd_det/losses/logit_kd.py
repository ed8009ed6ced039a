"""Logit distillation (Hinton et al. 2015): KL(teacher || student) at temperature T, times T^2.

On RoI class logits (softmax heads, Chen et al., NeurIPS 2017) and on dense-head
logits (per-class binary KL for sigmoid heads such as RetinaNet or FCOS).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor

from .receives import Receives
from .utils import as_float32_pair, check_non_negative, float32_no_autocast

ACTIVATIONS = ('softmax', 'sigmoid')


def softmax_kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Mean over rows of KL(softmax(teacher / T) || softmax(student / T)) * T^2, (R, K) logits."""
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    log_p_s = F.log_softmax(student / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * temperature**2


def sigmoid_kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Mean over rows of the per-class binary KL of sigmoid(logits / T), summed over classes, * T^2.

    ``KL(p || q) = p log(p / q) + (1 - p) log((1 - p) / (1 - q))`` with ``p = sigmoid(t / T)``,
    ``q = sigmoid(s / T)`` equals ``BCE(s / T, p) - BCE(t / T, p)`` (binary cross-entropy
    with logits, soft target p: the second term is p's entropy), computed by torch's fused,
    stable kernel: a few passes over the (R, K) rows, finite for any logits.
    """
    t, s = teacher / temperature, student / temperature
    p = torch.sigmoid(t)
    kl = (F.binary_cross_entropy_with_logits(s, p, reduction='sum')
          - F.binary_cross_entropy_with_logits(t, p, reduction='sum'))
    return kl / student.size(0) * temperature**2


@MODELS.register_module()
class LogitKDLoss(nn.Module):
    """loss_weight * T^2 * KL(teacher || student) of (R, K) class-logit rows.

    Rows are RoIs (``source='roi_cls'``) or priors (``'dense_cls'``); the
    KL is summed over classes and averaged over rows. ``activation`` is the
    heads' ('softmax' over K classes, or 'sigmoid': K binary KLs); the distiller
    derives it from the student's head, so configs leave it out. Computed in
    float32 even under autocast; the teacher is treated as a constant.

    Args:
        temperature: T > 0; 1 is the plain KL.
        activation: 'softmax' or 'sigmoid' (set by the distiller).
        num_classes: set by the distiller; only checked against the rows.
        loss_weight: weight of the loss.
    """

    receives = Receives(derived=('activation', 'num_classes'))

    def __init__(self, temperature: float = 1.0, activation: Optional[str] = None,
                 num_classes: Optional[int] = None, loss_weight: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f'LogitKDLoss: temperature must be > 0, got {temperature!r}')
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f'LogitKDLoss: activation={activation!r} is not one of '
                             f'{list(ACTIVATIONS)}')
        self.temperature = float(temperature)
        self.activation = activation
        self.num_classes = num_classes
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student, teacher: (R, K) logits. Returns the weighted scalar loss."""
        if self.activation is None:
            raise ValueError("LogitKDLoss: activation is not set; the distiller sets it from "
                             "the heads, standalone use needs activation='softmax' or 'sigmoid'")
        if student.dim() != 2 or student.shape != teacher.shape:
            raise ValueError(f'LogitKDLoss: expected student and teacher logits of equal shape '
                             f'(R, K), got {tuple(student.shape)} and {tuple(teacher.shape)}')
        if student.size(0) == 0:
            return student.sum() * 0
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            kd = softmax_kd_loss if self.activation == 'softmax' else sigmoid_kd_loss
            return self.loss_weight * kd(student, teacher, self.temperature)
