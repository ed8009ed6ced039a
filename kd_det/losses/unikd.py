"""UniKD: distillation through predicted distributions over the prediction space.

Huang et al., "Harmonizing Knowledge Transfer in Neural Network with Unified
Distillation", ECCV 2024, arXiv 2409.18565. Features are turned into a
distribution (a diagonal Gaussian predicted from them), and the student's
distribution is pulled towards the teacher's with the same kind of divergence
that distils logits.

On a two-stage detector (``source='roi_embed'``) the loss receives, for the
student's R sampled RoIs, the embedding each box head classifies (the input of
its ``fc_cls``; student (R, D_s), teacher (R, D_t)) and the teacher's class
logits on the same RoIs (``teacher_logits``, (R, K'): K + 1 for softmax heads,
K for sigmoid ones). Each side predicts a diagonal Gaussian over the K'-d
logit space from its embedding (:class:`DistributionPredictor`):

- the **teacher predictor** is trained only by a *support loss*, the Gaussian
  negative log-likelihood of the teacher's detached logits, so its mean follows
  the teacher's predictions and its variance the part of them it cannot
  predict (a random teacher branch would give a target that means nothing);
- the **student predictor** is trained, through the student's embedding, by
  the closed-form ``KL(N_t || N_s)`` per dimension (:func:`gaussian_kl`), with
  the teacher Gaussian detached.

The loss is ``loss_weight * KL + support_weight * NLL``, averaged over the RoIs.
The candidate code of the method (FabienCode/mdistiller, not confirmed as the
authors') also works on sampled RoIs in the prediction space, with a sampled
softmax divergence and a support term on both sides; box deltas, which it
also predicts, are not distilled here (``source='roi_reg'`` distils them).
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor

from .receives import Receives
from .utils import check_non_negative, float32_no_autocast

# Predicted log-variances are clamped to [-LOGVAR_BOUND, LOGVAR_BOUND]: precisions up to
# e^5 ~ 148 (a standard deviation down to 0.08 logit units). The KL's gradient on the
# student's mean grows with the precision; with a bound of 10 (precision 22026) SGD at
# the COCO recipe's learning rate diverged within 20 iterations of the demo.
LOGVAR_BOUND = 5.
ACTIVATIONS = ('softmax', 'sigmoid')


def gaussian_kl(mu_t: Tensor, logvar_t: Tensor, mu_s: Tensor, logvar_s: Tensor) -> Tensor:
    """KL(N(mu_t, exp(logvar_t)) || N(mu_s, exp(logvar_s))) of diagonal Gaussians.

    Args:
        mu_t, logvar_t (Tensor): Teacher (target) mean and log-variance, (..., D).
        mu_s, logvar_s (Tensor): Student mean and log-variance, (..., D).

    Returns:
        Tensor: KL summed over the last dimension, shape (...).
    """
    kl = 0.5 * (logvar_s - logvar_t + torch.exp(logvar_t - logvar_s) +
                (mu_t - mu_s).pow(2) * torch.exp(-logvar_s) - 1)
    return kl.sum(dim=-1)


def gaussian_nll(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """Negative log-likelihood of ``x`` under N(mu, exp(logvar)), without the constant
    ``log(2 pi) / 2``, summed over the last dimension: (..., D) -> (...)."""
    return 0.5 * (logvar + (x - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


class DistributionPredictor(nn.Module):
    """Diagonal Gaussian (mean, log-variance: each (R, D)) of (R, C) embeddings.

    A layer norm without parameters (the embeddings' scale differs between
    networks and training stages), then a linear layer. The log-variance is
    clamped to ``[-LOGVAR_BOUND, LOGVAR_BOUND]``.
    """

    def __init__(self, in_channels: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, 2 * out_dim)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        mu, logvar = self.fc(F.layer_norm(x, x.shape[1:])).chunk(2, dim=1)
        return mu, logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)


@MODELS.register_module()
class UniKDLoss(nn.Module):
    """UniKD's distribution loss on RoI embeddings, in the space of the class logits.

    Receives (``source='roi_embed'``): student embeddings (R, D_s), teacher
    embeddings (R, D_t) on the same RoIs and ``teacher_logits`` (R, K').

    Args:
        in_channels (int): Student embedding width (derived from its box head).
        teacher_channels (int): Teacher embedding width (derived).
        num_classes (int): Classes of the heads (derived).
        activation (str): ``'softmax'`` (K + 1 logits) or ``'sigmoid'`` (K;
            derived from the heads).
        support_weight (float): Weight of the teacher predictor's support loss;
            it trains that predictor only. Defaults to 1.0.
        loss_weight (float): Weight of the distillation KL. Defaults to 1.0.
    """

    receives = Receives(teacher_logits=True,
                        derived=('in_channels', 'teacher_channels', 'num_classes', 'activation'))

    def __init__(self,
                 in_channels: int = 1024,
                 teacher_channels: int = 1024,
                 num_classes: int = 80,
                 activation: str = 'softmax',
                 support_weight: float = 1.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f'UniKDLoss: activation={activation!r} is not one of '
                             f'{list(ACTIVATIONS)}')
        self.loss_weight = check_non_negative(loss_weight, 'UniKDLoss loss_weight')
        self.support_weight = check_non_negative(support_weight, 'UniKDLoss support_weight')
        self.in_channels = in_channels
        self.teacher_channels = teacher_channels
        self.logit_dim = num_classes + 1 if activation == 'softmax' else num_classes
        self.student_predictor = DistributionPredictor(in_channels, self.logit_dim)
        self.teacher_predictor = DistributionPredictor(teacher_channels, self.logit_dim)

    def forward(self, student: Tensor, teacher: Tensor, teacher_logits: Tensor) -> Tensor:
        """Weighted UniKD loss.

        Args:
            student (Tensor): (R, D_s) student RoI embeddings.
            teacher (Tensor): (R, D_t) teacher RoI embeddings of the same RoIs.
            teacher_logits (Tensor): (R, K') teacher class logits of the same RoIs.

        Returns:
            Tensor: Scalar float32 ``loss_weight * KL + support_weight * NLL``,
            means over the RoIs; 0 (still in the graph) without RoIs.
        """
        rows = student.size(0)
        if student.shape != (rows, self.in_channels) \
                or teacher.shape != (rows, self.teacher_channels) \
                or teacher_logits.shape != (rows, self.logit_dim):
            raise ValueError(
                f'UniKDLoss: expected student (R, {self.in_channels}), teacher '
                f'(R, {self.teacher_channels}) and teacher_logits (R, {self.logit_dim}), got '
                f'{tuple(student.shape)}, {tuple(teacher.shape)} and '
                f'{tuple(teacher_logits.shape)}')
        if rows == 0:
            return student.sum() * 0 + sum(p.sum() * 0 for p in self.parameters())
        with float32_no_autocast(student):
            mu_s, logvar_s = self.student_predictor(student.float())
            mu_t, logvar_t = self.teacher_predictor(teacher.detach().float())
            support = gaussian_nll(teacher_logits.detach().float(), mu_t, logvar_t)
            kl = gaussian_kl(mu_t.detach(), logvar_t.detach(), mu_s, logvar_s)
            return (self.loss_weight * kl.mean() / self.logit_dim
                    + self.support_weight * support.mean() / self.logit_dim)
