"""The student dense head's own label assignment, observed during its ``loss()``.

CrossKD weights its losses by the student's assignment (every prior with a label
weight, averaged over the positives) and LD distils at the student's positives. The
distiller reads the assignment the student's own ``loss()`` computes, not a second
one: for the step, :class:`AssignmentTap` shadows the head's ``get_targets`` on the
instance with a wrapper that calls the head's own method and records its inputs and
return value; the wrapper is removed when the step ends. The student's code is not
changed.

Read for heads that use mmdet's ``AnchorHead.get_targets`` (RetinaNet and other
anchor heads with a sampler-free or pseudo-sampled assigner) or ``ATSSHead`` /
``GFLHead``'s (ATSS, GFL, LD's student).
"""
from typing import List, NamedTuple, Sequence

import torch
from mmdet.models.dense_heads import AnchorHead, ATSSHead, GFLHead
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import reduce_mean
from torch import Tensor, nn

# get_targets -> index of labels_list in its return value; avg_factor is last.
READABLE = {AnchorHead.get_targets: 0, ATSSHead.get_targets: 1, GFLHead.get_targets: 1}
# Heads whose own classification loss averages the positives over GPUs (reduce_mean).
GPU_MEAN = (ATSSHead.get_targets, GFLHead.get_targets)


class Assignment(NamedTuple):
    """The student's assignment of a source's rows (one row per prior, the distiller's order).

    Attributes:
        labels: (R,) class index of each prior's target; ``num_classes`` is background.
        label_weights: (R,) 0 where the prior is ignored (outside the image, or between
            the assigner's IoU thresholds).
        avg_factor: the positives the head's own classification loss averages over
            (over all levels; ATSS and GFL: the mean over GPUs, as their loss takes it).
        priors: (R, 4) the anchors of the rows, (x1, y1, x2, y2).
    """
    labels: Tensor
    label_weights: Tensor
    avg_factor: float
    priors: Tensor


def check_assignment_readable(head: nn.Module, method: str) -> None:
    """Refuse a student head whose assignment kd_det cannot read, naming the method."""
    get_targets = getattr(type(head), 'get_targets', None)
    if get_targets not in READABLE:
        raise ValueError(
            f"{method} weights its loss by the student's own label assignment; the student's "
            f'{type(head).__name__} has its own get_targets, whose result kd_det does not read. '
            'Supported: heads using the get_targets of AnchorHead, ATSSHead or GFLHead '
            '(RetinaHead, ATSSHead, GFLHead); for other dense heads use LogitKDLoss on '
            "source='dense_cls'")


class AssignmentTap:
    """Context manager: records what the student head's ``get_targets`` computes.

    ``get()`` returns ``(per-level anchors [(L_l, 4)], per-level labels [(N, L_l)],
    per-level label weights [(N, L_l)], avg_factor)``.
    """

    def __init__(self, head: nn.Module) -> None:
        self.head = head
        self.records: List[tuple] = []
        self._gpu_mean = type(head).get_targets in GPU_MEAN
        self._labels_at = READABLE[type(head).get_targets]

    def __enter__(self) -> 'AssignmentTap':
        self.records = []
        own = self.head.get_targets  # the bound method of the head's class

        def observed(anchor_list, *args, **kwargs):
            # before the call: ATSS/GFL replace anchor_list's entries by concatenations
            anchors = [get_box_tensor(a) for a in anchor_list[0]]
            result = own(anchor_list, *args, **kwargs)
            i = self._labels_at
            self.records.append((anchors, result[i], result[i + 1], result[i + 4]))
            return result

        self.head.get_targets = observed
        return self

    def __exit__(self, *exc) -> None:
        self.head.__dict__.pop('get_targets', None)

    def get(self):
        if len(self.records) != 1:
            raise RuntimeError(f"expected the student's {type(self.head).__name__} to assign "
                               f'targets once in its loss(), it did {len(self.records)} times')
        anchors, labels, weights, avg_factor = self.records[0]
        avg_factor = float(avg_factor)
        if self._gpu_mean:
            avg_factor = reduce_mean(torch.tensor(avg_factor, device=labels[0].device)).item()
        return anchors, labels, weights, avg_factor


def assignment_rows(record, levels: Sequence[int]) -> Assignment:
    """The :class:`Assignment` of student ``levels``' rows from ``AssignmentTap.get()``."""
    anchors, labels, weights, avg_factor = record
    priors = [anchors[lvl].repeat(labels[lvl].size(0), 1) for lvl in levels]
    return Assignment(torch.cat([labels[lvl].reshape(-1) for lvl in levels]),
                      torch.cat([weights[lvl].reshape(-1) for lvl in levels]),
                      avg_factor, torch.cat(priors))

