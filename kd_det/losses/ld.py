"""LD, localization distillation (Zheng et al., CVPR 2022), as mmdet 3.3's ``LDHead`` does it.

At the positives of the student's own assignment, mmdet's ``KnowledgeDistillationKLDivLoss``
(T^2 * the KL of softmax(teacher / T) to softmax(student / T), averaged over the
reg_max + 1 bins) between the student's and the teacher's box-distribution logits, per
side, weighted by the student's detached top sigmoid class score, summed and divided by 4
(``avg_factor=4.0``), not by the sum of the weights. Transcribed from the description of
``LDHead.loss_by_feat_single`` in the mmdet 3.3.0 wheel (``mmdet/models/dense_heads/ld_head.py``).
mmdet's LD has no VLR term and no classification KD; neither is here.
"""
from typing import Optional

import torch.nn as nn
from mmdet.models.losses import KnowledgeDistillationKLDivLoss
from mmdet.registry import MODELS
from torch import Tensor

from .receives import Receives
from .utils import as_float32_pair, check_non_negative, float32_no_autocast


@MODELS.register_module()
class LDLoss(nn.Module):
    """LD on GFL's box-distribution bins at the student's positives.

    Receives (R, 4 * (reg_max + 1)) student and teacher distribution logits
    (``source='dense_reg'`` of GFL-style heads), the student's (R, K) class logits and its
    ``assignment``. ``num_classes`` is set by the distiller.

    Args:
        T: temperature, >= 1 (mmdet's class); LD: 10.
        loss_weight: LD: 0.25.
        num_classes: set by the distiller (labels >= num_classes are background).
    """

    receives = Receives(assignment=True, student_logits=True, reg_form='bins',
                        derived=('num_classes', ))

    def __init__(self, T: float = 10.0, loss_weight: float = 0.25,
                 num_classes: Optional[int] = None) -> None:
        super().__init__()
        if not T >= 1:
            raise ValueError(f"LDLoss: T={T!r}, expected >= 1 (mmdet's "
                             'KnowledgeDistillationKLDivLoss)')
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        self.num_classes = num_classes
        self.kl = KnowledgeDistillationKLDivLoss(T=T, loss_weight=self.loss_weight)

    def forward(self, student: Tensor, teacher: Tensor, assignment,
                student_logits: Tensor) -> Tensor:
        if self.num_classes is None:
            raise ValueError('LDLoss: num_classes is not set; the distiller sets it from the '
                             'heads, standalone use needs num_classes')
        if student.dim() != 2 or student.shape != teacher.shape or student.size(1) % 4 \
                or student_logits.shape[0] != student.shape[0]:
            raise ValueError(f'LDLoss: expected (R, 4 * (reg_max + 1)) student and teacher bins '
                             f'and (R, K) student logits, got {tuple(student.shape)}, '
                             f'{tuple(teacher.shape)} and {tuple(student_logits.shape)}')
        labels = assignment.labels
        pos = (labels >= 0) & (labels < self.num_classes)
        bins = student.size(1) // 4
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student[pos], teacher[pos])
            if student.numel() == 0:
                return student.sum() * 0
            weight = student_logits.detach().float().sigmoid().max(dim=1)[0][pos]
            return self.kl(student.reshape(-1, bins), teacher.reshape(-1, bins),
                           weight=weight[:, None].expand(-1, 4).reshape(-1), avg_factor=4.0)
