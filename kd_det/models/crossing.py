"""CrossKD's crossing (Wang et al., CVPR 2024): the student's head features, the teacher's head.

For every level, the student dense head's cls and reg branch features at its k-th stacked
conv (k = ``reused_teacher_head_idx``) are standardised per channel over (N, H, W),
rescaled with the mean and std of the teacher's features at the same point
(:func:`align_scale`), activated (ReLU) and run through the teacher's remaining stacked
convs and predictors, its ``Scale`` included. The teacher's own head ``forward`` computes
them: forward hooks replace the outputs of its k-th stacked convs by the crossed features,
so whatever the head does after them (scales, centerness, FCOS's exp or stride) is the
head's own code, in the teacher's eval mode (FCOS with ``norm_on_bbox``: distances times
the stride, as in CrossKD, whose teacher is in eval mode too). The
layers before are fed a 1x1 corner of the teacher's levels, whose outputs are discarded:
only the layers after k see the crossed features, at full size.

Which point is held: the official code (jbwang1997/CrossKD@87e156a,
``mmdet/models/detectors/crosskd_*.py``) keeps ``conv(x, activate=False)`` (conv + norm)
and then calls ``conv.activate`` on the same tensor; mmcv's ConvModule builds that ReLU
in-place, so the kept tensor is the activated one. Its published numbers were computed on
the k-th conv's activated output, and so is this crossing: the output of the k-th
ConvModule, on both sides.

The teacher is frozen (its parameters get no gradient) but this pass is not under
``no_grad``: the KD losses' gradients reach the student through the teacher's layers.
"""
from typing import Dict, List, Sequence, Tuple

import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.dense_heads import ATSSHead, FCOSHead
from torch import Tensor, nn

BRANCHES = ('cls_convs', 'reg_convs')
# Per-level forwards whose third output is a centerness logit map (N, A, H, W).
CENTERNESS_FORWARDS = {ATSSHead.forward_single: 'ATSSHead', FCOSHead.forward_single: 'FCOSHead'}


def align_scale(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """``student`` (N, C, H, W) standardised per channel over (N, H, W) (std unbiased,
    + eps), then given the per-channel mean and std of ``teacher`` (N, C, H, W)."""
    dims = (0, 2, 3)
    s_mean, s_std = student.mean(dims, keepdim=True), student.std(dims, keepdim=True)
    t_mean, t_std = teacher.mean(dims, keepdim=True), teacher.std(dims, keepdim=True)
    return (student - s_mean) / (s_std + eps) * t_std + t_mean


def check_cross_heads(student: nn.Module, teacher: nn.Module, centerness: bool = False
                      ) -> None:
    """Refuse detectors whose heads CrossKD's crossing does not fit, naming the head; with
    ``centerness`` (source 'cross_centerness'), heads that predict no centerness."""
    heads = [stacked_head(model, side)
             for model, side in ((student, 'student'), (teacher, 'teacher'))]
    names = [type(head).__name__ for head in heads]
    if names[0] != names[1]:
        raise ValueError(f"CrossKD runs the student's head features through the teacher's "
                         f'head: both need the same head type, got student {names[0]} and '
                         f'teacher {names[1]}')
    if centerness and type(heads[1]).forward_single not in CENTERNESS_FORWARDS:
        raise ValueError(
            f"source 'cross_centerness' distils the centerness the teacher's head predicts on "
            f'the crossed features; the {names[1]} predicts none. It works for '
            f'{" and ".join(CENTERNESS_FORWARDS.values())} pairs (CrossKD distils centerness '
            'in its ATSS recipe); for RetinaNet and GFL pairs drop that loss and keep '
            "'cross_cls' / 'cross_reg'")


def check_index(student_head: nn.Module, teacher_head: nn.Module, index) -> int:
    """``reused_teacher_head_idx`` checked against both heads (default: their last stacked
    conv but one, CrossKD's 3 of 4 for RetinaNet, GFL and ATSS; its FCOS recipe uses 2)."""
    heads = (student_head, teacher_head)
    name = type(student_head).__name__
    depth = min(len(head.cls_convs) for head in heads)
    if index is None:
        index = depth - 1
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= depth:
        raise ValueError(f'reused_teacher_head_idx={index!r}: expected an int in [1, {depth}], '
                         f'the stacked conv of the {name} after which the student crosses '
                         "into the teacher's head (CrossKD: 3 of 4 for RetinaNet, GFL, ATSS; "
                         '2 of 4 for FCOS)')
    for branch in BRANCHES:
        s_conv, t_conv = (getattr(head, branch)[index - 1] for head in heads)
        if s_conv.conv.out_channels != t_conv.conv.out_channels:
            raise ValueError(
                f"CrossKD: the student's {name}.{branch}[{index - 1}] gives "
                f"{s_conv.conv.out_channels} channels, the teacher's {t_conv.conv.out_channels}; "
                "the teacher's next layers need the teacher's width (feat_channels)")
    return index


def stacked_head(model: nn.Module, side: str) -> nn.Module:
    """The dense head with stacked ``cls_convs`` / ``reg_convs`` ConvModules, or an error."""
    name = type(model).__name__
    if getattr(model, 'roi_head', None) is not None:
        raise ValueError(
            f"CrossKD crosses a single-stage dense head's stacked convs into the teacher's; "
            f'the {side} {name} is a two-stage detector '
            f'(RoI head {type(model.roi_head).__name__}). '
            "For two-stage pairs use LogitKDLoss / BoxDeltaKDLoss on source='roi_cls' / "
            "'roi_reg', or a feature loss (PKDLoss) on the neck; CrossKD fits RetinaNet, GFL, "
            'ATSS and FCOS pairs')
    head = getattr(model, 'bbox_head', None)
    convs = [getattr(head, branch, None) for branch in BRANCHES]
    if not all(isinstance(c, nn.ModuleList) and len(c) and all(
            isinstance(m, ConvModule) for m in c) for c in convs):
        raise ValueError(
            f"CrossKD needs a dense head with stacked cls_convs / reg_convs (ConvModules "
            f"shared over levels); the {side} {name}'s "
            f'{type(head).__name__} has none. It fits RetinaHead, GFLHead, ATSSHead and '
            "FCOSHead; for other heads use LogitKDLoss on source='dense_cls' or a feature "
            'loss on the neck')
    if not head.use_sigmoid_cls:
        raise ValueError(f"CrossKD's classification KD is on sigmoid logits; the {side} "
                         f'{type(head).__name__} is softmax-based')
    return head


class HeldFeatures:
    """Context manager: records, per level, each branch's k-th stacked conv output, as
    ``{'cls_convs': [...], 'reg_convs': [...]}``."""

    def __init__(self, head: nn.Module, index: int) -> None:
        self.head, self.index = head, index
        self.levels: Dict[str, List[Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> 'HeldFeatures':
        self.levels = {branch: [] for branch in BRANCHES}
        for branch in BRANCHES:
            conv = getattr(self.head, branch)[self.index - 1]
            self._handles.append(conv.register_forward_hook(
                lambda module, args, out, b=branch: self.levels[b].append(out)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def cross_predictions(teacher_head: nn.Module, index: int, student: Dict[str, List[Tensor]],
                      teacher: Dict[str, List[Tensor]], teacher_levels: Sequence[Tensor]
                      ) -> Tuple:
    """The teacher head's outputs (cls_scores, bbox_preds, ...) on the crossed features.

    ``student`` / ``teacher``: :class:`HeldFeatures` levels of each side; ``teacher_levels``:
    the teacher's neck levels (only their batch size and channels matter here).
    """
    crossed = {}
    for branch in BRANCHES:
        if len(student[branch]) != len(teacher[branch]):
            raise RuntimeError(f'CrossKD: {len(student[branch])} student and '
                               f'{len(teacher[branch])} teacher levels of {branch} features')
        crossed[branch] = []
        for lvl, (s, t) in enumerate(zip(student[branch], teacher[branch])):
            if s.shape != t.shape:
                raise ValueError(f'CrossKD level {lvl}: the student head features '
                                 f'{tuple(s.shape)} and the teacher head features '
                                 f'{tuple(t.shape)} at {branch}[{index - 1}] differ')
            crossed[branch].append(F.relu(align_scale(s, t.to(s.dtype))))
    used = {branch: 0 for branch in BRANCHES}

    def replace(branch):
        def hook(module, args, out):
            used[branch] += 1
            return crossed[branch][used[branch] - 1]
        return hook

    handles = [getattr(teacher_head, b)[index - 1].register_forward_hook(replace(b))
               for b in BRANCHES]
    try:
        outs = teacher_head(tuple(x[..., :1, :1] for x in teacher_levels))
    finally:
        for handle in handles:
            handle.remove()
    if any(used[b] != len(crossed[b]) for b in BRANCHES):
        raise RuntimeError(f'CrossKD: the teacher {type(teacher_head).__name__} ran its '
                           f'stacked convs {used} times for {len(crossed["cls_convs"])} levels')
    return outs
