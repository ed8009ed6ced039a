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
