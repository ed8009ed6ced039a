"""The student dense head's own label assignment, observed during its ``loss()``.

CrossKD weights its losses by the student's assignment (every prior with a label
weight, averaged over the positives) and LD distils at the student's positives. The
distiller reads the assignment the student's own ``loss()`` computes, not a second
one: for the step, :class:`AssignmentTap` shadows the head's ``get_targets`` on the
instance with a wrapper that calls the head's own method and records its inputs and
return value; the wrapper is removed when the step ends. The student's code is not
changed.

Read for heads that use mmdet's ``AnchorHead.get_targets`` (RetinaNet and other
anchor heads with a sampler-free or pseudo-sampled assigner), ``ATSSHead`` /
``GFLHead``'s (ATSS, GFL, LD's student) or ``FCOSHead``'s (FCOS: points, no label
weights; the average is CrossKD's FCOS one, the sum of the positives' centerness targets).
"""
from typing import Callable, List, NamedTuple, Sequence

import torch
from mmdet.models.dense_heads import AnchorHead, ATSSHead, FCOSHead, GFLHead
from mmdet.structures.bbox import get_box_tensor
from mmdet.utils import reduce_mean
from torch import Tensor, nn


class Assignment(NamedTuple):
    """The student's assignment of a source's rows (one row per prior, the distiller's order).

    Attributes:
        labels: (R,) class index of each prior's target; ``num_classes`` is background.
        label_weights: (R,) 0 where the prior is ignored (outside the image, or between
            the assigner's IoU thresholds); all 1 for FCOS.
        avg_factor: what the KD losses average over (over all levels): the positives the
            head's own classification loss averages over (ATSS and GFL: the mean over
            GPUs, as their loss takes it); FCOS: CrossKD's, the sum of the positives'
            centerness targets, mean over GPUs, at least 1e-6.
        priors: (R, 4) the anchors of the rows, (x1, y1, x2, y2); FCOS: (R, 2) points.
    """
    labels: Tensor
    label_weights: Tensor
    avg_factor: float
    priors: Tensor


class _Reader(NamedTuple):
    """How one ``get_targets`` is read.

    ``priors(first argument)``: the per-level priors [(L_l, D)], read before the call;
    ``targets(head, result, priors)``: (per-level labels [(N, L_l)], per-level label
    weights [(N, L_l)], this process's avg_factor); ``gpu_mean``: the avg_factor is
    averaged over GPUs, then raised to ``floor``.
    """
    priors: Callable
    targets: Callable
    gpu_mean: bool
    floor: float = 0.0


def _image_anchors(anchor_list) -> List[Tensor]:
    # read before the call: ATSS/GFL replace anchor_list's entries by concatenations
    return [get_box_tensor(a) for a in anchor_list[0]]


def _fcos_targets(head: nn.Module, result, points: Sequence[Tensor]):
    """FCOS: per-level labels (N * L_l,) -> (N, L_l), no label weights, and the sum of the
    head's own centerness targets at the positives."""
    labels = [lab.view(-1, p.size(0)) for lab, p in zip(result[0], points)]
    flat, targets = torch.cat(result[0]), torch.cat(result[1])
    pos = (flat >= 0) & (flat < head.num_classes)
    centerness = head.centerness_target(targets[pos]).sum()
    return labels, [torch.ones_like(lab, dtype=torch.float) for lab in labels], centerness


READERS = {
    AnchorHead.get_targets: _Reader(_image_anchors, lambda h, r, p: (r[0], r[1], r[4]), False),
    ATSSHead.get_targets: _Reader(_image_anchors, lambda h, r, p: (r[1], r[2], r[5]), True),
    GFLHead.get_targets: _Reader(_image_anchors, lambda h, r, p: (r[1], r[2], r[5]), True),
    FCOSHead.get_targets: _Reader(list, _fcos_targets, True, floor=1e-6),
}


def check_assignment_readable(head: nn.Module, method: str) -> None:
    """Refuse a student head whose assignment kd_det cannot read, naming the method."""
    get_targets = getattr(type(head), 'get_targets', None)
    if get_targets not in READERS:
        raise ValueError(
            f"{method} weights its loss by the student's own label assignment; the student's "
            f'{type(head).__name__} has its own get_targets, whose result kd_det does not read. '
            'Supported: heads using the get_targets of AnchorHead, ATSSHead, GFLHead or '
            'FCOSHead (RetinaHead, ATSSHead, GFLHead, FCOSHead); for other dense heads use '
            "LogitKDLoss on source='dense_cls'")


class AssignmentTap:
    """Context manager: records what the student head's ``get_targets`` computes.

    ``get()`` returns ``(per-level priors [(L_l, 4)] or points [(L_l, 2)], per-level
    labels [(N, L_l)], per-level label weights [(N, L_l)], avg_factor)``.
    """

    def __init__(self, head: nn.Module) -> None:
        self.head = head
        self.records: List[tuple] = []
        self._reader = READERS[type(head).get_targets]

    def __enter__(self) -> 'AssignmentTap':
        self.records = []
        own = self.head.get_targets  # the bound method of the head's class

        def observed(first, *args, **kwargs):
            priors = self._reader.priors(first)
            result = own(first, *args, **kwargs)
            self.records.append((priors, *self._reader.targets(self.head, result, priors)))
            return result

        self.head.get_targets = observed
        return self

    def __exit__(self, *exc) -> None:
        self.head.__dict__.pop('get_targets', None)

    def get(self):
        if len(self.records) != 1:
            raise RuntimeError(f"expected the student's {type(self.head).__name__} to assign "
                               f'targets once in its loss(), it did {len(self.records)} times')
        priors, labels, weights, avg_factor = self.records[0]
        avg_factor = float(avg_factor)
        if self._reader.gpu_mean:
            avg_factor = reduce_mean(torch.tensor(avg_factor, device=labels[0].device)).item()
        return priors, labels, weights, max(avg_factor, self._reader.floor)


def assignment_rows(record, levels: Sequence[int]) -> Assignment:
    """The :class:`Assignment` of student ``levels``' rows from ``AssignmentTap.get()``."""
    priors, labels, weights, avg_factor = record
    rows = [priors[lvl].repeat(labels[lvl].size(0), 1) for lvl in levels]
    return Assignment(torch.cat([labels[lvl].reshape(-1) for lvl in levels]),
                      torch.cat([weights[lvl].reshape(-1) for lvl in levels]),
                      avg_factor, torch.cat(rows))
