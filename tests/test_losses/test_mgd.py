"""MGDLoss against the official arithmetic (tests/test_losses/official_fgd_mgd.py) on a seeded
mask, its mask ratio, gradients and refusals."""
import pytest
import torch
from mmdet.registry import MODELS

import kd_det.losses  # noqa: F401  (registers the losses)
from kd_det.losses import mgd_loss
from kd_det.losses.mgd import random_mask
from official_fgd_mgd import official_mgd_level

SHAPES = [(2, 6, 9, 13), (2, 6, 5, 7)]


def features(seed=0):
    torch.manual_seed(seed)
    teacher = [torch.randn(shape) for shape in SHAPES]
    student = [(t + torch.randn_like(t)).requires_grad_() for t in teacher]
    return student, teacher


def build(**kwargs):
    return MODELS.build(dict(type='MGDLoss', in_channels=6, teacher_channels=6, num_levels=2,
                             **kwargs))


def weights(generation):
    return generation[0].weight, generation[0].bias, generation[2].weight, generation[2].bias


@pytest.mark.parametrize('alpha, lam', [(2e-5, 0.65), (5e-7, 0.45)])
def test_equals_the_official_arithmetic_on_the_same_mask(alpha, lam):
    """The same seed draws the same masks (level 0, then level 1) in both; value and
    gradients (student features, generation weights) equal the transcription's."""
    student, teacher = features()
    loss = build(alpha_mgd=alpha, lambda_mgd=lam)
    torch.manual_seed(5)
    ours = loss(student, teacher)
    params = list(loss.parameters())
    grads = torch.autograd.grad(ours, student + params)
    torch.manual_seed(5)
    reference = sum(official_mgd_level(s, t, weights(g), alpha, lam)
                    for s, t, g in zip(student, teacher, loss.generation))
    ref_grads = torch.autograd.grad(reference, student + params)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-9)
    assert all(float(g.abs().sum()) > 0 for g in grads)


def test_mask_ratio_and_sharing_across_channels():
    torch.manual_seed(0)
    mask = random_mask(torch.zeros(8, 5, 64, 64), 0.65)
    assert mask.shape == (8, 1, 64, 64)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs(float(1 - mask.mean()) - 0.65) < 0.01  # the masked share is lambda
    assert bool((random_mask(torch.zeros(2, 5, 8, 8), 0.0) == 1).all())


def test_without_masking_it_is_the_generated_feature_mse():
    student, teacher = features()
    loss = build(alpha_mgd=1.0, lambda_mgd=0.0)
    expected = sum(((g(s) - t) ** 2).sum() / s.size(0)
                   for s, t, g in zip(student, teacher, loss.generation))
    torch.testing.assert_close(loss(student, teacher), expected)
    torch.testing.assert_close(mgd_loss(student[0], teacher[0], loss.generation[0],
                                        torch.ones(2, 1, 9, 13)),
                               ((loss.generation[0](student[0]) - teacher[0]) ** 2).sum() / 2)


def test_every_parameter_gets_a_gradient_and_the_teacher_none():
    student, teacher = features()
    teacher = [t.requires_grad_() for t in teacher]
    loss = build()
    loss(student, teacher).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in loss.parameters())
    assert all(t.grad is None for t in teacher)


def test_float32_under_autocast_and_loss_weight():
    student, teacher = features()
    loss = build()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        value = loss([s.bfloat16() for s in student], [t.bfloat16() for t in teacher])
    assert value.dtype == torch.float32 and value.shape == ()
    doubled = build(loss_weight=2.0)
    doubled.load_state_dict(loss.state_dict())
    torch.manual_seed(3)
    once = loss(student, teacher)
    torch.manual_seed(3)
    torch.testing.assert_close(doubled(student, teacher), 2 * once)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r'lambda_mgd .* \[0, 1\], got 1.5'):
        build(lambda_mgd=1.5)
    with pytest.raises(ValueError, match='-1'):
        build(alpha_mgd=-1)
    with pytest.raises(ValueError, match='connectors'):
        MODELS.build(dict(type='MGDLoss', in_channels=4, teacher_channels=6, num_levels=2))
    student, teacher = features()
    with pytest.raises(ValueError, match=r'\(2, 6, 9, 13\).*\(2, 6, 9, 12\)'):
        build()(student, [teacher[0][..., :12], teacher[1]])
