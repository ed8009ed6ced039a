"""Helpers shared by the feature-distillation losses."""
from typing import Tuple

import torch
from torch import Tensor


def check_feature_pair(student: Tensor, teacher: Tensor, name: str) -> None:
    """Raise a clear error unless ``student`` and ``teacher`` are (N, C, H, W) of equal shape."""
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f'{name} expects 4-D (N, C, H, W) features, got student '
                         f'{tuple(student.shape)} and teacher {tuple(teacher.shape)}')
    if student.shape != teacher.shape:
        raise ValueError(
            f'{name}: student features {tuple(student.shape)} and teacher features '
            f'{tuple(teacher.shape)} differ; expected equal (N, C, H, W). Configure a '
            f'connector (channels) or spatial alignment (size) in the distillation detector.')


def as_float32_pair(student: Tensor, teacher: Tensor) -> Tuple[Tensor, Tensor]:
    """Student in float32 (keeps its graph), teacher in float32 and detached."""
    return student.float(), teacher.detach().float()


def float32_no_autocast(student: Tensor):
    """Context manager that turns autocast off on ``student``'s device.

    Use with :func:`as_float32_pair` so a loss computes in float32 under AMP::

        with float32_no_autocast(student):
            s, t = as_float32_pair(student, teacher)
            ...
    """
    return torch.autocast(device_type=student.device.type, enabled=False)


def check_non_negative(value: float, name: str) -> float:
    """Return ``value`` as float, raising ``ValueError`` naming it if it is negative."""
    if value < 0:
        raise ValueError(f'{name} must be non-negative, got {value!r}')
    return float(value)


def check_same_shape(student: Tensor, teacher: Tensor, name: str) -> None:
    """Raise a clear error unless ``student`` and ``teacher`` are (N, ...) of equal shape."""
    if student.dim() < 2 or student.shape != teacher.shape:
        raise ValueError(f'{name}: student {tuple(student.shape)} and teacher '
                         f'{tuple(teacher.shape)} must have equal shapes (N, ...)')


def feature_pair_loss(name: str, fn, student: Tensor, teacher: Tensor, loss_weight: float,
                      *args) -> Tensor:
    """``loss_weight * fn(student, teacher, *args)`` on (N, C, H, W) features of equal shape
    (checked, naming the loss ``name``), in float32 under autocast, the teacher constant."""
    check_feature_pair(student, teacher, name)
    with float32_no_autocast(student):
        student, teacher = as_float32_pair(student, teacher)
        return loss_weight * fn(student, teacher, *args)


def level_channels(name: str, in_channels, teacher_channels, num_levels) -> Tuple[int, int]:
    """``(channels, num_levels)`` of a loss that owns per-level modules on levels of one width.

    ``in_channels`` (student, after connectors) and ``teacher_channels`` are ints or
    per-level lists, all equal; the distiller derives all three.
    """
    widths = set()
    for given in (in_channels, teacher_channels):
        if given is not None:
            widths.update(given if isinstance(given, (list, tuple)) else [given])
    if teacher_channels is None or num_levels is None:
        raise ValueError(f'{name} builds modules per level and needs teacher_channels and '
                         f'num_levels (got {teacher_channels!r}, {num_levels!r}): the distiller '
                         "derives them for source='neck' from the teacher's neck out_channels; "
                         'give them when building the loss alone')
    if len(widths) != 1:
        raise ValueError(f'{name}: student levels have {in_channels} channels, teacher levels '
                         f'{teacher_channels}; configure the distiller\'s connectors=dict('
                         f'in_channels=<student>, out_channels=<teacher>) (a 1x1 conv, as the '
                         'official align layer)')
    if num_levels < 1:
        raise ValueError(f'{name}: num_levels must be >= 1, got {num_levels!r}')
    return widths.pop(), int(num_levels)


def check_level_lists(name: str, student, teacher, num_levels: int, channels: int) -> None:
    """Raise naming ``name`` unless both are lists of ``num_levels`` (N, ``channels``, H, W)
    levels, student and teacher level of equal shape."""
    def count(levels) -> str:
        return str(len(levels)) if isinstance(levels, (list, tuple)) else type(levels).__name__

    if count(student) != str(num_levels) or count(teacher) != str(num_levels):
        raise ValueError(f'{name} was built for {num_levels} levels and is called with the '
                         f'lists of levels; got {count(student)} student and {count(teacher)} '
                         'teacher levels')
    for lvl, (s, t) in enumerate(zip(student, teacher)):
        check_feature_pair(s, t, f'{name} level {lvl}')
        if s.size(1) != channels:
            raise ValueError(f'{name} level {lvl}: expected {channels} channels, got '
                             f'{tuple(s.shape)}')
