"""LogitKDLoss against direct transcriptions: torch's kl_div (softmax), a hand-written binary KL."""
import math

import pytest
import torch
import torch.nn.functional as F

from kd_det.losses import LogitKDLoss


def logits(rows=6, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, classes, generator=gen) * 3,
            torch.randn(rows, classes, generator=gen) * 3)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_softmax_matches_torch_kl_div(temperature):
    student, teacher = logits()
    loss = LogitKDLoss(temperature, activation='softmax', loss_weight=0.5)(student, teacher)
    expected = F.kl_div(F.log_softmax(student / temperature, 1),
                        F.softmax(teacher / temperature, 1), reduction='batchmean')
    torch.testing.assert_close(loss, 0.5 * expected * temperature**2)


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_sigmoid_matches_a_binary_kl_by_hand(temperature):
    student, teacher = logits(rows=3, classes=4, seed=1)
    loss = LogitKDLoss(temperature, activation='sigmoid')(student, teacher)
    total = 0.0
    for row in range(3):
        for k in range(4):
            p = 1 / (1 + math.exp(-teacher[row, k].item() / temperature))
            q = 1 / (1 + math.exp(-student[row, k].item() / temperature))
            total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert loss.item() == pytest.approx(total / 3 * temperature**2, rel=1e-5)


def test_sigmoid_is_finite_for_extreme_logits_and_zero_when_equal():
    big = torch.tensor([[60., -60., 0.]])
    loss = LogitKDLoss(activation='sigmoid')
    assert torch.isfinite(loss(-big, big))
    assert loss(big, big).abs() < 1e-6


def test_gradient_reaches_student_only_and_teacher_is_constant():
    student, teacher = logits()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    LogitKDLoss(2.0, activation='softmax')(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_no_rows_gives_an_attached_zero():
    student = torch.zeros(0, 5, requires_grad=True)
    loss = LogitKDLoss(activation='softmax')(student, torch.zeros(0, 5))
    assert loss.item() == 0 and loss.requires_grad


@pytest.mark.parametrize('kwargs, call, match', [
    (dict(temperature=0), None, 'temperature must be > 0, got 0'),
    (dict(activation='softmaxx'), None, "activation='softmaxx' is not one of"),
    (dict(), (torch.zeros(2, 3), torch.zeros(2, 3)), 'activation is not set'),
    (dict(activation='softmax'), (torch.zeros(2, 3), torch.zeros(2, 4)),
     r'\(2, 3\) and \(2, 4\)'),
])
def test_bad_input_is_named(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        loss = LogitKDLoss(**kwargs)
        loss(*call)
