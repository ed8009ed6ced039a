import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from kd_det.losses.unikd import UniKDLoss, gaussian_kl, gaussian_nll


def _loss(**kwargs):
    torch.manual_seed(0)
    cfg = dict(in_channels=6, teacher_channels=5, num_classes=3, activation='softmax')
    cfg.update(kwargs)
    return UniKDLoss(**cfg)


def _rows(r=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(r, 6, generator=g), torch.randn(r, 5, generator=g),
            torch.randn(r, 4, generator=g))


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_t, lv_t, mu_s, lv_s = (torch.randn(3, 7, generator=g) for _ in range(4))
    expected = kl_divergence(Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1),
                             Independent(Normal(mu_s, (0.5 * lv_s).exp()), 1))
    assert torch.allclose(gaussian_kl(mu_t, lv_t, mu_s, lv_s), expected, atol=1e-5)
    assert torch.allclose(gaussian_kl(mu_t, lv_t, mu_t, lv_t), torch.zeros(3))


def test_gaussian_nll_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x, mu, lv = (torch.randn(4, 5, generator=g) for _ in range(3))
    log_prob = Independent(Normal(mu, (0.5 * lv).exp()), 1).log_prob(x)
    assert torch.allclose(gaussian_nll(x, mu, lv), -log_prob - 2.5 * math.log(2 * math.pi),
                          atol=1e-5)


def test_value_is_weighted_kl_plus_support_per_logit():
    loss = _loss(loss_weight=2.0, support_weight=0.5)
    s, t, logits = _rows()

    def gaussian(fc, x):  # parameter-free layer norm, then the linear layer
        mu, lv = F.linear(F.layer_norm(x, x.shape[1:]), fc.weight, fc.bias).chunk(2, dim=1)
        return mu, lv.clamp(-5, 5)

    mu_s, lv_s = gaussian(loss.student_predictor.fc, s)
    mu_t, lv_t = gaussian(loss.teacher_predictor.fc, t)
    kl = kl_divergence(Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1),
                       Independent(Normal(mu_s, (0.5 * lv_s).exp()), 1)).mean()
    nll = -Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1).log_prob(logits).mean() \
        - 2 * math.log(2 * math.pi)
    assert loss(s, t, logits).item() == pytest.approx(((2.0 * kl + 0.5 * nll) / 4).item(),
                                                      rel=1e-5)


def test_logit_dim_follows_the_activation():
    assert _loss(activation='softmax').student_predictor.fc.out_features == 2 * 4
    assert _loss(activation='sigmoid').student_predictor.fc.out_features == 2 * 3


def test_teacher_predictor_learns_from_the_support_loss_only():
    s, t, logits = _rows()
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = _loss(support_weight=0.)
    loss(s, t, logits).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    assert loss.student_predictor.fc.weight.grad.abs().sum() > 0
    assert loss.teacher_predictor.fc.weight.grad.abs().sum() == 0  # KL: teacher detached
    loss = _loss(loss_weight=0.)
    s.grad = None
    loss(s, t, logits).backward()
    assert s.grad is None or s.grad.abs().sum() == 0
    assert loss.teacher_predictor.fc.weight.grad.abs().sum() > 0


def test_support_fits_the_teacher_logits_and_the_student_follows():
    """Trained together, the teacher Gaussian's mean approaches the teacher's logits and
    the student's Gaussian approaches the teacher's (the student sees the same embedding)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(64, 5, generator=g)
    logits = t @ torch.randn(5, 4, generator=g)
    loss = _loss(in_channels=5)

    def gaps():
        with torch.no_grad():
            mu_t, lv_t = loss.teacher_predictor(t)
            mu_s, lv_s = loss.student_predictor(t)
        return (mu_t - logits).abs().mean(), gaussian_kl(mu_t, lv_t, mu_s, lv_s).mean()

    fit0, kl0 = gaps()
    optim = torch.optim.Adam(loss.parameters(), lr=0.02)
    for _ in range(300):
        optim.zero_grad()
        loss(t, t, logits).backward()
        optim.step()
    fit, kl = gaps()
    assert fit < 0.5 * fit0 and kl < 0.1 * kl0


def test_float32_under_bf16_autocast():
    loss = _loss()
    s, t, logits = _rows()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = loss(s.bfloat16(), t.bfloat16(), logits.bfloat16())
    assert out.dtype == torch.float32
    expected = loss(s.bfloat16().float(), t.bfloat16().float(), logits.bfloat16().float())
    assert torch.allclose(out, expected, rtol=1e-5)


def test_no_rows_gives_attached_zero():
    loss = _loss()
    s = torch.zeros(0, 6, requires_grad=True)
    out = loss(s, torch.zeros(0, 5), torch.zeros(0, 4))
    out.backward()
    assert out.item() == 0 and loss.student_predictor.fc.weight.grad is not None


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'tanh'"):
        _loss(activation='tanh')
    with pytest.raises(ValueError, match='-1'):
        _loss(loss_weight=-1)
    with pytest.raises(ValueError, match='support_weight'):
        _loss(support_weight=-0.5)
    s, t, logits = _rows()
    with pytest.raises(ValueError, match=r'teacher_logits \(R, 4\), got .*\(10, 3\)'):
        _loss()(s, t, logits[:, :3])
    with pytest.raises(ValueError, match=r'student \(R, 6\)'):
        _loss()(s[:, :4], t, logits)
