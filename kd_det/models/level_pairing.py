"""Pair student and teacher feature levels by stride.

A level's stride is read off the detector: the strides of the prior (anchor or
point) generator of its RPN or dense head, which lists one stride per neck
output; where a detector has none (DETR family) or the counts disagree, the
strides are measured by running the backbone (+ neck) once on a blank image.
Student level ``i`` is paired with the teacher level of the same stride.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Stride = Union[int, Tuple[int, int]]
# A blank image this size measures strides up to 256 exactly.
PROBE_SIZE = 256


def level_strides(detector: nn.Module, source: str) -> List[Stride]:
    """Strides of the ``source`` ('neck' or 'backbone') outputs of a built detector.

    Raises:
        ValueError: the strides can be neither read nor measured.
    """
    if source == 'neck':
        strides = _prior_strides(detector)
        num_outs = _neck_num_outs(getattr(detector, 'neck', None))
        if strides is not None and (num_outs is None or num_outs == len(strides)):
            return strides
    run = detector.extract_feat if source == 'neck' else detector.backbone
    try:
        return _measure_strides(detector, run)
    except Exception as err:  # any model-specific failure means: not derivable
        raise ValueError(
            f'cannot derive the {source} level strides of {type(detector).__name__} '
            f'(no prior generator, and a probe forward failed: {err!r}); give '
            '`level_pairs=[(student_level, teacher_level), ...]`') from None


def pair_levels(student_strides: Sequence[Stride], teacher_strides: Sequence[Stride]
                ) -> Dict[int, int]:
    """``{student level: teacher level}`` for every student level whose stride the teacher has.

    Raises:
        ValueError: no stride in common (names both stride lists).
    """
    teacher_level = {stride: lvl for lvl, stride in enumerate(teacher_strides)}
    pairs = {lvl: teacher_level[s] for lvl, s in enumerate(student_strides)
             if s in teacher_level}
    if not pairs:
        raise ValueError(f'student and teacher levels have no stride in common: student '
                         f'strides {list(student_strides)}, teacher strides '
                         f'{list(teacher_strides)}; give `level_pairs` to pair them anyway')
    return pairs


def explicit_pairs(level_pairs: Sequence, num_student: Optional[int],
                   num_teacher: Optional[int]) -> Dict[int, int]:
    """``level_pairs=[(student_level, teacher_level), ...]`` checked and as a dict."""
    pairs: Dict[int, int] = {}
    for pair in level_pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(v, int) and v >= 0 for v in pair)):
            raise ValueError(f'level_pairs entry {pair!r}: expected (student_level, '
                             'teacher_level), two ints >= 0')
        s, t = pair
        for side, lvl, num in (('student', s, num_student), ('teacher', t, num_teacher)):
            if num is not None and lvl >= num:
                raise ValueError(f'level_pairs entry {tuple(pair)}: the {side} has levels '
                                 f'0..{num - 1}, not {lvl}')
        if s in pairs:
            raise ValueError(f'level_pairs pairs student level {s} twice')
        pairs[s] = t
    if not pairs:
        raise ValueError('level_pairs is empty; leave it out to pair levels by stride')
    return pairs


def describe_pairs(pairs: Dict[int, int], student_strides: Optional[Sequence[Stride]],
                   teacher_strides: Optional[Sequence[Stride]]) -> str:
    """'student 0 (stride 8) <- teacher 1 (stride 8), ...' for the log."""
    def name(side, lvl, strides):
        return f'{side} {lvl}' + (f' (stride {strides[lvl]})' if strides else '')
    return ', '.join(f'{name("student", s, student_strides)} <- '
                     f'{name("teacher", t, teacher_strides)}'
                     for s, t in sorted(pairs.items()))


def _as_stride(stride) -> Stride:
    if isinstance(stride, (tuple, list)):
        h, w = (int(v) for v in stride)
        return h if h == w else (h, w)
    return int(stride)


def _prior_strides(detector: nn.Module) -> Optional[List[Stride]]:
    """Strides of the RPN's or dense head's prior generator, None if it has none."""
    for head_name in ('rpn_head', 'bbox_head'):
        generator = getattr(getattr(detector, head_name, None), 'prior_generator', None)
        strides = getattr(generator, 'strides', None)
        if strides:
            return [_as_stride(s) for s in strides]
    return None


def _neck_num_outs(neck: Optional[nn.Module]) -> Optional[int]:
    """Number of outputs of FPN-family and ChannelMapper necks, None if unknown."""
    if neck is None:
        return None
    if isinstance(getattr(neck, 'num_outs', None), int):
        return neck.num_outs
    if isinstance(getattr(neck, 'convs', None), nn.ModuleList):  # ChannelMapper
        return len(neck.convs) + len(getattr(neck, 'extra_convs', None) or [])
    return None


@torch.no_grad()
def _measure_strides(detector: nn.Module, run) -> List[Stride]:
    """Run ``run`` on a blank image in eval mode (no statistics updated); size ratios."""
    param = next(detector.parameters())
    image = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=param.device, dtype=param.dtype)
    was_training = detector.training
    detector.eval()
    try:
        outs = run(image)
    finally:
        detector.train(was_training)
    if isinstance(outs, Tensor):
        outs = [outs]
    return [_as_stride((PROBE_SIZE // o.shape[-2], PROBE_SIZE // o.shape[-1])) for o in outs]


def level_strides_if_known(detector: nn.Module, source: str) -> Optional[List[Stride]]:
    """:func:`level_strides`, or None where they cannot be read or measured."""
    try:
        return level_strides(detector, source)
    except ValueError:
        return None


def align_paired_level(student: Tensor, teacher: Tensor, level: int, t_level: int,
                       spatial_align: str) -> Tensor:
    """Student level ``level`` (N, C, H, W), of the teacher level ``t_level``'s stride, sized
    like it: as it is, or (``spatial_align='interpolate'``) resized bilinearly; a channel or
    (with ``'error'``) a size difference is refused, naming both shapes."""
    where = f'student level {level} / teacher level {t_level}'
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f'{where}: student features {tuple(student.shape)} and teacher '
            f'features {tuple(teacher.shape)} have different channels; configure '
            f'`connectors` in the distillation detector')
    if student.shape[2:] == teacher.shape[2:]:
        return student
    if spatial_align == 'interpolate':
        return F.interpolate(student, size=teacher.shape[2:], mode='bilinear',
                             align_corners=False)
    raise ValueError(
        f'{where}: student features {tuple(student.shape)} and teacher features '
        f'{tuple(teacher.shape)} differ in size although their strides are equal '
        "(padding or rounding); set spatial_align='interpolate' to resize the student's")
