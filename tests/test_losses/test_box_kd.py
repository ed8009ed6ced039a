"""BoxDeltaKDLoss: the teacher's top class picks the deltas, confident rows only."""
import pytest
import torch

from kd_det.losses import BoxDeltaKDLoss


def test_selects_confident_rows_and_the_teachers_class_deltas():
    num_classes = 3
    # row 0: teacher sure of class 2; row 1: unsure (background most likely)
    teacher_logits = torch.tensor([[0., 0., 9., 0.], [0., 0., 0., 9.]])
    student = torch.arange(24, dtype=torch.float32).view(2, 12)
    teacher = torch.zeros(2, 12)
    loss = BoxDeltaKDLoss('l1', score_thr=0.5, activation='softmax',
                          num_classes=num_classes)(student, teacher, teacher_logits)
    # only row 0, columns 8..11 (class 2): |8|, |9|, |10|, |11|
    assert loss.item() == pytest.approx((8 + 9 + 10 + 11) / 4)
    l2 = BoxDeltaKDLoss('l2', score_thr=0.5, activation='softmax',
                        num_classes=num_classes)(student, teacher, teacher_logits)
    assert l2.item() == pytest.approx((64 + 81 + 100 + 121) / 4)


def test_class_agnostic_sigmoid_rows_and_nothing_confident():
    loss = BoxDeltaKDLoss(score_thr=0.9, activation='sigmoid', num_classes=2)
    student = torch.ones(2, 4, requires_grad=True)
    teacher_logits = torch.tensor([[5., -5.], [-5., -5.]])
    value = loss(student, torch.zeros(2, 4), teacher_logits)
    assert value.item() == pytest.approx(1.0)
    value.backward()
    assert student.grad[1].abs().sum() == 0 and student.grad[0].abs().sum() > 0
    none = loss(student, torch.zeros(2, 4), torch.full((2, 2), -9.))
    assert none.item() == 0 and none.requires_grad


@pytest.mark.parametrize('kwargs, match', [
    (dict(loss_type='smooth'), "loss_type='smooth' is not one of"),
    (dict(score_thr=1.5), r'score_thr=1.5, expected a probability'),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoxDeltaKDLoss(**kwargs)


def test_wrong_delta_width_is_named():
    loss = BoxDeltaKDLoss(activation='softmax', num_classes=3, score_thr=0.)
    with pytest.raises(ValueError, match=r'\(R, 4 \* 3\).*\(2, 8\)'):
        loss(torch.zeros(2, 8), torch.zeros(2, 8), torch.zeros(2, 4))
