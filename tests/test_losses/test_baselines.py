"""FeatureMSELoss, PKDLoss and CWDLoss against their definitions."""
import pytest
import torch
import torch.nn.functional as F

from kd_det.losses.cwd import CWDLoss, cwd_loss
from kd_det.losses.feature_mse import FeatureMSELoss, feature_mse_loss
from kd_det.losses.pkd import PKDLoss, pkd_loss

SHAPE = (2, 3, 5, 7)


def pair(dtype=torch.float32):
    teacher = torch.randn(SHAPE, dtype=dtype)
    return teacher + torch.randn(SHAPE, dtype=dtype), teacher


def test_feature_mse_matches_definition():
    student, teacher = pair()
    expected = sum(float(s - t)**2 for s, t in zip(student.flatten(), teacher.flatten()))
    torch.testing.assert_close(FeatureMSELoss(2.0)(student, teacher).item(),
                               2.0 * expected / student.numel(), rtol=1e-5, atol=0)


def test_pkd_matches_mmrazor_definition():
    """MMRazor: per channel over (N, H, W), (x - mean) / (std + 1e-6), std unbiased; MSE / 2."""
    student, teacher = pair()

    def standardise(x):
        out = torch.empty_like(x)
        for c in range(x.shape[1]):
            values = x[:, c]
            out[:, c] = (values - values.mean()) / (values.std() + 1e-6)
        return out

    expected = ((standardise(student) - standardise(teacher))**2).mean() / 2
    torch.testing.assert_close(PKDLoss(6.0)(student, teacher), 6.0 * expected)


def standardised_mse(student, teacher, eps=1e-6):
    """PKD through standardised copies (the earlier implementation), for autograd."""
    def standardise(x):
        count = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1 if count > 1 else 0,
                                   keepdim=True)
        return (x - mean) / (var.clamp_min(1e-24).sqrt() + eps)

    return F.mse_loss(standardise(student), standardise(teacher)) / 2


@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 4, 1, 1), (3, 2, 1, 6), (1, 2, 1, 1)])
def test_pkd_closed_form_matches_standardised_mse_and_its_gradients(shape):
    """Values and gradients (student and teacher) of the closed form equal autograd through
    the standardised features in float64, a constant channel and single values included."""
    g = torch.Generator().manual_seed(0)
    student = torch.randn(shape, dtype=torch.float64, generator=g)
    teacher = 2 * student + torch.randn(shape, dtype=torch.float64, generator=g)
    student[:, 0] = 1.5  # constant: clamped variance
    for function in (pkd_loss, standardised_mse):
        s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        value = function(s, t)
        value.backward()
        if function is pkd_loss:
            expected = (value.detach(), s.grad, t.grad)
        else:
            torch.testing.assert_close(expected[0], value.detach(), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(expected[1], s.grad, rtol=1e-8, atol=1e-9)
            torch.testing.assert_close(expected[2], t.grad, rtol=1e-8, atol=1e-9)
    smooth = (student + torch.randn(shape, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(pkd_loss, (smooth, teacher.clone().requires_grad_()))


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_cwd_matches_kl_definition(tau):
    """Sum over (N, C) of KL(softmax(t / tau) || softmax(s / tau)) over H * W, * tau^2 / (N C)."""
    student, teacher = pair()
    n, c = SHAPE[:2]
    expected = 0
    for i in range(n):
        for j in range(c):
            log_p_s = F.log_softmax(student[i, j].flatten() / tau, 0)
            p_t = F.softmax(teacher[i, j].flatten() / tau, 0)
            expected = expected + F.kl_div(log_p_s, p_t, reduction='sum')
    expected = expected * tau**2 / (n * c)
    torch.testing.assert_close(CWDLoss(10.0, tau=tau)(student, teacher), 10.0 * expected)


@pytest.mark.parametrize('tau', [1.0, 4.0])
def test_cwd_gradient_matches_autograd_through_the_definition(tau):
    """The written-out backward equals autograd through log-softmaxes and the KL (float64)."""
    student, teacher = pair(torch.float64)
    s_ref, s = student.clone().requires_grad_(), student.clone().requires_grad_()
    log_p_s = F.log_softmax(s_ref.flatten(2) / tau, -1)
    log_p_t = F.log_softmax(teacher.flatten(2) / tau, -1)
    reference = (log_p_t.exp() * (log_p_t - log_p_s)).sum() * tau**2 / (SHAPE[0] * SHAPE[1])
    reference.backward()
    value = cwd_loss(s, teacher, tau)
    value.backward()
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize('function', [feature_mse_loss, pkd_loss, cwd_loss])
def test_gradcheck(function):
    student, teacher = pair(torch.float64)
    student.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: function(s, teacher), (student,))


@pytest.mark.parametrize('loss', [FeatureMSELoss(), PKDLoss(), CWDLoss()])
def test_identical_inputs_zero_and_monotone(loss):
    teacher = torch.randn(SHAPE)
    noise = torch.randn(SHAPE)
    values = [loss(teacher + a * noise, teacher).item() for a in (2.0, 1.0, 0.5, 0.0)]
    assert values == sorted(values, reverse=True)
    assert abs(values[-1]) < 1e-6


def test_pkd_is_invariant_to_per_channel_affine_changes():
    student, teacher = pair()
    scale, shift = torch.rand(1, 3, 1, 1) + 0.5, torch.randn(1, 3, 1, 1)
    torch.testing.assert_close(pkd_loss(student * scale + shift, teacher),
                               pkd_loss(student, teacher), rtol=1e-4, atol=1e-5)


def test_cwd_invalid_tau():
    with pytest.raises(ValueError, match='tau'):
        CWDLoss(tau=0)
