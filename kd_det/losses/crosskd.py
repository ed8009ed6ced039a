"""CrossKD's prediction losses (Wang et al., CVPR 2024; jbwang1997/CrossKD).

They read the ``'cross_cls'`` / ``'cross_reg'`` / ``'cross_centerness'`` sources: the
teacher head's predictions on the student's crossed head features (the student rows)
against the teacher's own predictions (the teacher rows), one row per prior, weighted by
the student's own label assignment. Transcribed from the description in the official
``mmdet/models/detectors/crosskd_{retinanet,gfl}.py`` and ``mmdet/models/losses/kd_loss.py``
at commit 87e156a46259e3a516b65fc6a049b200b9ab0d54, and ``crosskd_{atss,fcos}.py`` at
ae7fba9bb029532dfbf1d15e140dd74a99c1829e; the box, bin and centerness terms reuse mmdet's
IoU losses, ``KnowledgeDistillationKLDivLoss`` and ``CrossEntropyLoss``.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.losses import CrossEntropyLoss, KnowledgeDistillationKLDivLoss
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor

from .receives import Receives
from .utils import as_float32_pair, check_non_negative, float32_no_autocast

BIN_REDUCTIONS = ('sum', 'mean')


def kd_quality_focal_loss(student: Tensor, teacher: Tensor, beta: float) -> Tensor:
    """(R, K) elementwise ``BCE(s, sigmoid(t)) * |sigmoid(s) - sigmoid(t)| ** beta`` of logits."""
    target = teacher.sigmoid()
    bce = F.binary_cross_entropy_with_logits(student, target, reduction='none')
    return bce * (student.sigmoid() - target).abs().pow(beta)


def teacher_weights(teacher_logits: Tensor, label_weights: Tensor) -> Tensor:
    """(R,) the teacher's top sigmoid score per row, 0 where the student ignores the prior."""
    weights = teacher_logits.detach().float().max(dim=1)[0].sigmoid()
    return torch.where(label_weights > 0, weights, weights.new_zeros(()))


def _check_rows(name: str, student: Tensor, teacher: Tensor, label_weights: Tensor) -> None:
    if student.dim() != 2 or student.shape != teacher.shape \
            or label_weights.shape != student.shape[:1]:
        raise ValueError(f'{name}: expected student and teacher rows (R, D) of equal shape and '
                         f'(R,) label weights, got {tuple(student.shape)}, '
                         f'{tuple(teacher.shape)} and {tuple(label_weights.shape)}')


@MODELS.register_module()
class CrossKDClsLoss(nn.Module):
    """CrossKD's classification KD (the official ``KDQualityFocalLoss``, beta 1).

    ``sum over priors with a label weight and classes of BCE(s, sigmoid(t)) *
    |sigmoid(s) - sigmoid(t)| ** beta * label_weight / avg_factor``: no temperature,
    the teacher a constant, averaged over the student's positives.

    Receives (R, K) crossed and teacher class logits (``source='cross_cls'``) and the
    student's ``assignment``.
    """

    receives = Receives(assignment=True)

    def __init__(self, beta: float = 1.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = check_non_negative(beta, 'CrossKDClsLoss beta')
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')

    def forward(self, student: Tensor, teacher: Tensor, assignment) -> Tensor:
        _check_rows('CrossKDClsLoss', student, teacher, assignment.label_weights)
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            loss = kd_quality_focal_loss(student, teacher, self.beta)
            weight = assignment.label_weights.float()[:, None]
            return self.loss_weight * weight_reduce_loss(
                loss, weight, reduction='mean', avg_factor=assignment.avg_factor)


@MODELS.register_module()
class CrossKDBoxLoss(nn.Module):
    """CrossKD's box KD for RetinaNet, ATSS and FCOS heads: an mmdet box loss (GIoU; CrossKD's
    FCOS recipe: IoU) between the crossed and the teacher's decoded boxes at every prior,
    weighted by the teacher's top sigmoid score (0 where the student ignores the prior),
    averaged over the ``assignment``'s avg_factor.

    Receives (R, 4) boxes (``source='cross_reg'``; decoded by the distiller with the
    student head's box coder from its anchors or points), the teacher's class logits and
    the ``assignment``.

    Args:
        loss_weight: CrossKD: 1 (RetinaNet, ATSS), 0.75 (FCOS).
        box_loss: the mmdet loss on (R, 4) box pairs, without a ``loss_weight`` (this
            class's is the only one); default ``dict(type='GIoULoss')``.
    """

    receives = Receives(teacher_logits=True, assignment=True, reg_form='boxes')

    def __init__(self, loss_weight: float = 1.0, box_loss: Optional[dict] = None) -> None:
        super().__init__()
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        box_loss = dict(type='GIoULoss') if box_loss is None else dict(box_loss)
        if 'loss_weight' in box_loss:
            raise ValueError(f'CrossKDBoxLoss: box_loss={box_loss!r} sets its own loss_weight; '
                             "set CrossKDBoxLoss's loss_weight instead")
        self.box_loss = MODELS.build(box_loss)

    def forward(self, student: Tensor, teacher: Tensor, teacher_logits: Tensor,
                assignment) -> Tensor:
        _check_rows('CrossKDBoxLoss', student, teacher, assignment.label_weights)
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            weight = teacher_weights(teacher_logits, assignment.label_weights)
            return self.loss_weight * self.box_loss(student, teacher, weight=weight,
                                                    avg_factor=assignment.avg_factor)


@MODELS.register_module()
class CrossKDBinsLoss(nn.Module):
    """CrossKD's box KD for GFL heads: mmdet's ``KnowledgeDistillationKLDivLoss`` between the
    crossed and the teacher's box-distribution logits, per side, at every prior.

    Each side's KL is weighted by the teacher's top sigmoid score of the prior (0 where the
    student ignores it); the sum is divided by 4 (mmdet's ``avg_factor=4.0``) and by the sum
    of the weights (0 when every weight is 0).

    Args:
        T: temperature (mmdet's class needs T >= 1); CrossKD uses 1.
        bin_reduction: ``'sum'`` (CrossKD's ``class_reduction='sum'``: the KL summed over
            the reg_max + 1 bins, mmdet's mean times the number of bins, read off the rows)
            or ``'mean'`` (mmdet 3.3's class as it is).
        loss_weight: CrossKD's GFL config uses 4.0 with ``'sum'``.
    """

    receives = Receives(teacher_logits=True, assignment=True, reg_form='bins')

    def __init__(self, T: float = 1.0, bin_reduction: str = 'sum',
                 loss_weight: float = 4.0) -> None:
        super().__init__()
        if bin_reduction not in BIN_REDUCTIONS:
            raise ValueError(f'CrossKDBinsLoss: bin_reduction={bin_reduction!r} is not one of '
                             f'{list(BIN_REDUCTIONS)}')
        if not T >= 1:
            raise ValueError(f'CrossKDBinsLoss: T={T!r}, expected >= 1 (mmdet\'s '
                             'KnowledgeDistillationKLDivLoss)')
        self.bin_reduction = bin_reduction
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        self.kl = KnowledgeDistillationKLDivLoss(T=T, loss_weight=1.0)

    def forward(self, student: Tensor, teacher: Tensor, teacher_logits: Tensor,
                assignment) -> Tensor:
        _check_rows('CrossKDBinsLoss', student, teacher, assignment.label_weights)
        if student.size(1) % 4:
            raise ValueError(f'CrossKDBinsLoss: expected 4 * (reg_max + 1) bins per row, got '
                             f'{student.size(1)}')
        bins = student.size(1) // 4
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            weight = teacher_weights(teacher_logits, assignment.label_weights)
            loss = self.kl(student.reshape(-1, bins), teacher.reshape(-1, bins),
                           weight=weight[:, None].expand(-1, 4).reshape(-1), avg_factor=4.0)
            if self.bin_reduction == 'sum':
                loss = loss * bins
            total = weight.sum()
            return self.loss_weight * loss / torch.where(total > 0, total, total.new_ones(()))


@MODELS.register_module()
class CrossKDCenternessLoss(nn.Module):
    """CrossKD's centerness KD (its ATSS recipe): mmdet's sigmoid ``CrossEntropyLoss`` of the
    crossed centerness logits against the teacher's centerness probability (the sigmoid of
    its logits) at the student's positives, summed and / the ``assignment``'s avg_factor
    (ATSS: the positives, mean over GPUs). 0 without positives.

    Receives (R, 1) crossed and teacher centerness logits (``source='cross_centerness'``,
    ATSS or FCOS heads) and the ``assignment``. ``num_classes`` is set by the distiller.

    Args:
        loss_weight: CrossKD's ATSS config: 1.
        num_classes: set by the distiller (labels >= num_classes are background).
    """

    receives = Receives(assignment=True, derived=('num_classes', ),
                        sources=('cross_centerness', ))

    def __init__(self, loss_weight: float = 1.0, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        self.num_classes = num_classes
        self.bce = CrossEntropyLoss(use_sigmoid=True, loss_weight=1.0)

    def forward(self, student: Tensor, teacher: Tensor, assignment) -> Tensor:
        if self.num_classes is None:
            raise ValueError('CrossKDCenternessLoss: num_classes is not set; the distiller sets '
                             'it from the heads, standalone use needs num_classes')
        labels = assignment.labels
        if student.dim() != 2 or student.size(1) != 1 or student.shape != teacher.shape \
                or labels.shape != student.shape[:1]:
            raise ValueError(f'CrossKDCenternessLoss: expected (R, 1) student and teacher '
                             f'centerness logits and (R,) labels, got {tuple(student.shape)}, '
                             f'{tuple(teacher.shape)} and {tuple(labels.shape)}')
        pos = (labels >= 0) & (labels < self.num_classes)
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student[pos, 0], teacher[pos, 0])
            if student.numel() == 0:
                return student.sum() * 0
            return self.loss_weight * self.bce(student, teacher.sigmoid(),
                                               avg_factor=assignment.avg_factor)
