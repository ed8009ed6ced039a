"""Box-regression distillation on the rows where the teacher is confident."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor

from .receives import Receives
from .utils import as_float32_pair, check_non_negative, float32_no_autocast


def teacher_confidence(logits: Tensor, activation: str, num_classes: int):
    """(score, class) of the teacher's most likely foreground class per row.

    ``logits``: (R, K + 1) softmax logits (background last, as mmdet) or (R, K) sigmoid.
    """
    if activation == 'softmax':
        probs = logits.softmax(dim=1)[:, :num_classes]
    else:
        probs = logits.sigmoid()[:, :num_classes]
    return probs.max(dim=1)


def class_deltas(deltas: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(R, 4) deltas of class ``labels`` from class-specific (R, 4K) or agnostic (R, 4) ones."""
    if deltas.size(1) == 4:
        return deltas
    if deltas.size(1) != 4 * num_classes:
        raise ValueError(f'BoxDeltaKDLoss: expected (R, 4) or (R, 4 * {num_classes}) box '
                         f'deltas, got {tuple(deltas.shape)}')
    index = (labels * 4).unsqueeze(1) + torch.arange(4, device=deltas.device)
    return deltas.gather(1, index)


def box_delta_kd_loss(student: Tensor, teacher: Tensor, teacher_logits: Tensor, activation: str,
                      num_classes: int, score_thr: float, loss_type: str) -> Tensor:
    """L1 or squared error of the (R, 4*) deltas on rows whose teacher score >= ``score_thr``.

    Per row the deltas of the teacher's top foreground class are compared; the mean
    is over the selected rows and the 4 coordinates, 0 when none is selected.
    """
    score, labels = teacher_confidence(teacher_logits, activation, num_classes)
    keep = score >= score_thr
    s = class_deltas(student, labels, num_classes)[keep]
    t = class_deltas(teacher, labels, num_classes)[keep]
    if s.numel() == 0:
        return student.sum() * 0
    return F.l1_loss(s, t) if loss_type == 'l1' else F.mse_loss(s, t)


@MODELS.register_module()
class BoxDeltaKDLoss(nn.Module):
    """loss_weight * L1 / L2 between student and teacher box deltas where the teacher is sure.

    Reads ``source='roi_reg'`` (RoI head deltas, class-specific or agnostic) or
    ``'dense_reg'`` (per-prior (R, 4) deltas) and the teacher's class logits of the
    same rows. ``activation`` and ``num_classes`` are set by the distiller.

    Args:
        loss_type: 'l1' or 'l2' (squared error).
        score_thr: rows whose teacher top foreground probability is below are ignored.
        activation, num_classes: set by the distiller from the heads.
        loss_weight: weight of the loss.
    """

    receives = Receives(teacher_logits=True, derived=('activation', 'num_classes'))

    def __init__(self, loss_type: str = 'l1', score_thr: float = 0.5,
                 activation: Optional[str] = None, num_classes: Optional[int] = None,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if loss_type not in ('l1', 'l2'):
            raise ValueError(f"BoxDeltaKDLoss: loss_type={loss_type!r} is not one of "
                             "['l1', 'l2']")
        if not 0 <= score_thr <= 1:
            raise ValueError(f'BoxDeltaKDLoss: score_thr={score_thr!r}, expected a '
                             'probability in [0, 1]')
        self.loss_type = loss_type
        self.score_thr = float(score_thr)
        self.activation = activation
        self.num_classes = num_classes
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')

    def forward(self, student: Tensor, teacher: Tensor, teacher_logits: Tensor) -> Tensor:
        """student, teacher: (R, 4) or (R, 4K) deltas; teacher_logits: (R, K [+ 1])."""
        if self.activation is None or self.num_classes is None:
            raise ValueError('BoxDeltaKDLoss: activation and num_classes are not set; the '
                             'distiller sets them from the heads, standalone use needs both')
        if student.dim() != 2 or student.shape[0] != teacher.shape[0] \
                or teacher_logits.shape[0] != teacher.shape[0]:
            raise ValueError(f'BoxDeltaKDLoss: expected (R, *) rows, got student '
                             f'{tuple(student.shape)}, teacher {tuple(teacher.shape)}, '
                             f'teacher logits {tuple(teacher_logits.shape)}')
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            return self.loss_weight * box_delta_kd_loss(
                student, teacher, teacher_logits.detach().float(), self.activation,
                self.num_classes, self.score_thr, self.loss_type)
