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

With ``source='roi_levels'`` each side first fuses its FPN levels, as the paper's
adaptive features fusion does (:class:`~.feature_fusion.RoILevelFusion`): the
loss receives, per side, the RoIAlign of every sampled RoI on every level the
box RoI extractor reads (L tensors (R, C, S, S), finest first), and predicts
the Gaussian from the fused, pooled vector instead of the box head's
embedding. The teacher's fusion, like its predictor, is trained only by the
support loss.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor

from .feature_fusion import RoILevelFusion
from .receives import Receives
from .utils import check_non_negative, float32_no_autocast

# Predicted log-variances are clamped to [-LOGVAR_BOUND, LOGVAR_BOUND]: precisions up to
# e^5 ~ 148 (a standard deviation down to 0.08 logit units). The KL's gradient on the
# student's mean grows with the precision; with a bound of 10 (precision 22026) SGD at
# the COCO recipe's learning rate diverged within 20 iterations of the demo.
LOGVAR_BOUND = 5.
ACTIVATIONS = ('softmax', 'sigmoid')
# what the loss can read: the box heads' embeddings, or the RoI features of every level
UNIKD_SOURCES = ('roi_embed', 'roi_levels')


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
    """UniKD's distribution loss on sampled RoIs, in the space of the class logits.

    Receives, by ``source`` (which the distiller sets from the entry's own):

    - ``'roi_embed'``: student embeddings (R, D_s), teacher embeddings (R, D_t)
      on the same RoIs and ``teacher_logits`` (R, K');
    - ``'roi_levels'``: student and teacher RoI features of every level, lists
      of L tensors (R, C_s, S, S) and (R, C_t, S, S) (finest level first), and
      ``teacher_logits`` (R, K'); each side fuses its levels
      (:class:`~.feature_fusion.RoILevelFusion`) before predicting.

    Args:
        in_channels (int): Student embedding width, or its FPN width on
            ``'roi_levels'`` (derived from its box head / RoI extractor).
        teacher_channels (int): The teacher's (derived).
        num_classes (int): Classes of the heads (derived).
        activation (str): ``'softmax'`` (K + 1 logits) or ``'sigmoid'`` (K;
            derived from the heads).
        source (str): ``'roi_embed'`` or ``'roi_levels'`` (derived: the
            distiller passes the entry's ``source``).
        num_levels (int, optional): Levels fused on ``'roi_levels'`` (derived
            from the student's RoI extractor).
        fused_channels (int, optional): Common channels of the fusion; default
            ``in_channels``.
        support_weight (float): Weight of the teacher side's support loss; it
            trains the teacher-side predictor (and fusion) only. Defaults to 1.0.
        loss_weight (float): Weight of the distillation KL. Defaults to 1.0.
    """

    receives = Receives(teacher_logits=True,
                        derived=('in_channels', 'teacher_channels', 'num_classes', 'activation',
                                 'source', 'num_levels'))

    def __init__(self,
                 in_channels: int = 1024,
                 teacher_channels: int = 1024,
                 num_classes: int = 80,
                 activation: str = 'softmax',
                 source: str = 'roi_embed',
                 num_levels: Optional[int] = None,
                 fused_channels: Optional[int] = None,
                 support_weight: float = 1.0,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f'UniKDLoss: activation={activation!r} is not one of '
                             f'{list(ACTIVATIONS)}')
        if source not in UNIKD_SOURCES:
            raise ValueError(f'UniKDLoss reads source {list(UNIKD_SOURCES)}, got '
                             f"source={source!r}: 'roi_embed' for the box heads' embeddings, "
                             "'roi_levels' for the fused RoI features of every FPN level")
        fusion = source == 'roi_levels'
        if fusion and num_levels is None:
            raise ValueError("UniKDLoss(source='roi_levels') needs num_levels, the number of "
                             "levels the RoI extractor reads (the distiller sets it)")
        if not fusion and (num_levels is not None or fused_channels is not None):
            raise ValueError(f"UniKDLoss: num_levels={num_levels!r} / fused_channels="
                             f"{fused_channels!r} configure the fusion of source='roi_levels'; "
                             f'with source={source!r} leave them out')
        self.loss_weight = check_non_negative(loss_weight, 'UniKDLoss loss_weight')
        self.support_weight = check_non_negative(support_weight, 'UniKDLoss support_weight')
        self.source = source
        self.in_channels = in_channels
        self.teacher_channels = teacher_channels
        self.num_levels = num_levels
        self.logit_dim = num_classes + 1 if activation == 'softmax' else num_classes
        if fusion:
            fused_channels = in_channels if fused_channels is None else fused_channels
            self.student_fusion = RoILevelFusion(in_channels, num_levels, fused_channels)
            self.teacher_fusion = RoILevelFusion(teacher_channels, num_levels, fused_channels)
            widths = (fused_channels, fused_channels)
        else:
            widths = (in_channels, teacher_channels)
        self.student_predictor = DistributionPredictor(widths[0], self.logit_dim)
        self.teacher_predictor = DistributionPredictor(widths[1], self.logit_dim)

    def forward(self, student: Union[Tensor, List[Tensor]], teacher: Union[Tensor, List[Tensor]],
                teacher_logits: Tensor) -> Tensor:
        """Weighted UniKD loss.

        Args:
            student: (R, D_s) student RoI embeddings (``'roi_embed'``), or L
                (R, C_s, S, S) RoI features, finest level first (``'roi_levels'``).
            teacher: the teacher's, of the same RoIs (R, D_t) / L (R, C_t, S, S).
            teacher_logits (Tensor): (R, K') teacher class logits of the same RoIs.

        Returns:
            Tensor: Scalar float32 ``loss_weight * KL + support_weight * NLL``,
            means over the RoIs; 0 (still in the graph) without RoIs.
        """
        rows = self._check_inputs(student, teacher, teacher_logits)
        first = student[0] if self.source == 'roi_levels' else student
        if rows == 0:
            return first.sum() * 0 + sum(p.sum() * 0 for p in self.parameters())
        with float32_no_autocast(first):
            if self.source == 'roi_levels':
                student = self.student_fusion([s.float() for s in student])
                teacher = self.teacher_fusion([t.detach().float() for t in teacher])
            else:
                student, teacher = student.float(), teacher.detach().float()
            mu_s, logvar_s = self.student_predictor(student)
            mu_t, logvar_t = self.teacher_predictor(teacher)
            support = gaussian_nll(teacher_logits.detach().float(), mu_t, logvar_t)
            kl = gaussian_kl(mu_t.detach(), logvar_t.detach(), mu_s, logvar_s)
            return (self.loss_weight * kl.mean() / self.logit_dim
                    + self.support_weight * support.mean() / self.logit_dim)

    def _check_inputs(self, student, teacher, teacher_logits: Tensor) -> int:
        """The number of RoIs R; raises naming the expected shapes."""
        rows = teacher_logits.size(0) if teacher_logits.dim() == 2 else -1
        if self.source == 'roi_embed':
            expected = f'student (R, {self.in_channels}), teacher (R, {self.teacher_channels})'
            ok = isinstance(student, Tensor) and isinstance(teacher, Tensor) \
                and student.shape == (rows, self.in_channels) \
                and teacher.shape == (rows, self.teacher_channels)
        else:
            expected = (f'student {self.num_levels} x (R, {self.in_channels}, S, S), teacher '
                        f'{self.num_levels} x (R, {self.teacher_channels}, S, S), finest level '
                        'first')
            ok = _levels_fit(student, self.num_levels, rows, self.in_channels) and \
                _levels_fit(teacher, self.num_levels, rows, self.teacher_channels) and \
                student[0].shape[2:] == teacher[0].shape[2:]
        if not ok or teacher_logits.shape != (rows, self.logit_dim):
            raise ValueError(
                f'UniKDLoss (source={self.source!r}): expected {expected} and teacher_logits '
                f'(R, {self.logit_dim}), got {_shapes(student)}, {_shapes(teacher)} and '
                f'{tuple(teacher_logits.shape)}')
        return rows


def _levels_fit(levels, num_levels: int, rows: int, channels: int) -> bool:
    """Whether ``levels`` are ``num_levels`` tensors (rows, channels, S, S) of one size."""
    if not isinstance(levels, (list, tuple)) or len(levels) != num_levels \
            or not all(isinstance(x, Tensor) and x.dim() == 4 for x in levels):
        return False
    return all(x.shape == (rows, channels) + tuple(levels[0].shape[2:]) for x in levels)


def _shapes(value) -> str:
    if isinstance(value, Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_shapes(v) for v in value) + ']'
    return type(value).__name__
