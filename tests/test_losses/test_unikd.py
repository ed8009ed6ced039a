import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from kd_det.losses.unikd import (AdaptiveFeatureFusion, UniKDLoss, gaussian_kl,
                                 sampled_softmax_kl)


def _feats(n, channels, sizes, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, s, s, generator=g).requires_grad_(requires_grad)
            for s in sizes]


def _small_loss(**kwargs):
    torch.manual_seed(0)
    cfg = dict(in_channels=4, teacher_channels=6, num_levels=3, fused_channels=8,
               embed_dim=5)
    cfg.update(kwargs)
    return UniKDLoss(**cfg)


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only cost time (a lot on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _copy_teacher_branch_to_student(loss):
    loss.student_fusion.load_state_dict(loss.teacher_fusion.state_dict())
    loss.student_predictor.load_state_dict(loss.teacher_predictor.state_dict())


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_t, lv_t, mu_s, lv_s = (torch.randn(3, 7, generator=g) for _ in range(4))
    expected = kl_divergence(Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1),
                             Independent(Normal(mu_s, (0.5 * lv_s).exp()), 1))
    assert torch.allclose(gaussian_kl(mu_t, lv_t, mu_s, lv_s), expected, atol=1e-5)
    assert torch.allclose(gaussian_kl(mu_t, lv_t, mu_t, lv_t), torch.zeros(3))


def test_sampled_softmax_kl_formula():
    g = torch.Generator().manual_seed(0)
    mu_t, lv_t, mu_s, lv_s, noise = (torch.randn(3, 7, generator=g) for _ in range(5))
    z_t, z_s = mu_t + (0.5 * lv_t).exp() * noise, mu_s + (0.5 * lv_s).exp() * noise
    expected = F.kl_div(F.log_softmax(z_s / 2, -1), F.softmax(z_t / 2, -1),
                        reduction='none').sum(-1) * 4
    out = sampled_softmax_kl(mu_t, lv_t, mu_s, lv_s, 2.0, noise)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(sampled_softmax_kl(mu_t, lv_t, mu_t, lv_t, 2.0), torch.zeros(3),
                          atol=1e-6)


def test_fusion_shapes_and_gate():
    fusion = AdaptiveFeatureFusion([4, 6, 8], 5)
    feats = [torch.randn(2, c, s, s) for c, s in ((4, 9), (6, 5), (8, 3))]
    assert fusion(feats).shape == (2, 5, 9, 9)
    # Gates closed on the deeper input: the fused map is the finest lateral.
    for gate in fusion.gates:
        torch.nn.init.zeros_(gate.conv.weight)
        gate.conv.bias.data = torch.tensor([50., -50.])
    assert torch.allclose(fusion(feats), fusion.laterals[0](feats[0]), atol=1e-5)


@pytest.mark.parametrize('divergence', ['gaussian', 'sampled'])
def test_zero_for_identical_branches_and_features(divergence):
    loss = _small_loss(teacher_channels=4, divergence=divergence)
    _copy_teacher_branch_to_student(loss)
    feats = _feats(2, 4, (8, 4, 2))
    assert loss(feats, feats).abs().item() < 1e-6
    assert loss(feats, _feats(2, 4, (8, 4, 2), seed=1)).item() > 0


def test_loss_is_mean_kl_per_dimension_of_predicted_gaussians():
    loss = _small_loss(loss_weight=3.0)
    s, t = _feats(2, 4, (8, 4, 2), seed=0), _feats(2, 6, (8, 4, 2), seed=1)
    with torch.no_grad():
        mu_s, lv_s = loss.student_predictor(loss.student_fusion(s))
        mu_t, lv_t = loss.teacher_predictor(loss.teacher_fusion(t))
    expected = kl_divergence(Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1),
                             Independent(Normal(mu_s, (0.5 * lv_s).exp()), 1)).mean()
    assert torch.allclose(loss(s, t), 3.0 * expected / 5, rtol=1e-5)  # per dimension


@pytest.mark.parametrize('divergence', ['gaussian', 'sampled'])
def test_gradients_reach_student_side_only(divergence):
    loss = _small_loss(divergence=divergence)
    s = _feats(2, 4, (8, 4, 2), requires_grad=True, seed=0)
    t = _feats(2, 6, (8, 4, 2), requires_grad=True, seed=1)
    loss(s, t).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
    student_params = [*loss.student_fusion.parameters(), *loss.student_predictor.parameters()]
    assert all(p.grad is not None for p in student_params)
    teacher_params = [*loss.teacher_fusion.parameters(), *loss.teacher_predictor.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in teacher_params)


def test_cannot_collapse(one_thread):
    """Uninformative student features: training every trainable parameter cannot go
    below the best constant Gaussian (moment matching), and the teacher branch stays."""
    loss = _small_loss()
    offsets = 3 * torch.randn(4, 6, 1, 1)  # images differ in their pooled features
    t = [x + offsets for x in _feats(4, 6, (8, 4, 2), seed=1)]
    s = [torch.zeros(4, 4, x.size(2), x.size(3)) for x in t]
    teacher_state = {k: v.clone() for k, v in loss.state_dict().items() if 'teacher' in k}
    with torch.no_grad():
        mu_t, lv_t = loss.teacher_predictor(loss.teacher_fusion(t))
    mean = mu_t.mean(0)
    var = (lv_t.exp() + mu_t**2).mean(0) - mean**2
    bound = gaussian_kl(mu_t, lv_t, mean.expand_as(mu_t), var.log().expand_as(lv_t)).mean() / 5
    assert bound > 0.05
    optim = torch.optim.Adam(loss.parameters(), lr=0.1)
    for _ in range(50):
        optim.zero_grad()
        value = loss(s, t)
        value.backward()
        optim.step()
    assert loss(s, t).item() >= bound.item() - 1e-4
    assert all(torch.equal(loss.state_dict()[k], v) for k, v in teacher_state.items())


def test_learns_when_student_sees_teacher_features(one_thread):
    loss = _small_loss(teacher_channels=4)
    t = _feats(4, 4, (8, 4, 2), seed=1)
    optim = torch.optim.Adam(loss.parameters(), lr=0.02)
    first = loss(t, t).item()
    for _ in range(60):
        optim.zero_grad()
        loss(t, t).backward()
        optim.step()
    assert loss(t, t).item() < 0.5 * first


def test_sgd_at_detector_learning_rate_is_stable(one_thread):
    """mmdet's SGD (lr 0.02, momentum 0.9), student and teacher features of different
    scales: the per-dimension KL decreases steadily (the summed KL overshoots here)."""
    torch.manual_seed(0)
    loss = UniKDLoss(in_channels=64, teacher_channels=64, num_levels=3, fused_channels=64,
                     embed_dim=128)
    s = [3 * x for x in _feats(2, 64, (8, 4, 2), seed=0)]
    t = [0.1 * x for x in _feats(2, 64, (8, 4, 2), seed=1)]
    optim = torch.optim.SGD(loss.parameters(), lr=0.02, momentum=0.9)
    first = loss(s, t).item()
    for _ in range(100):
        optim.zero_grad()
        value = loss(s, t)
        value.backward()
        optim.step()
        assert value.item() <= first * 1.001
    assert loss(s, t).item() < 0.05 * first


def test_float32_under_bf16_autocast():
    loss = _small_loss()
    s = [x.bfloat16() for x in _feats(2, 4, (8, 4, 2), seed=0)]
    t = [x.bfloat16() for x in _feats(2, 6, (8, 4, 2), seed=1)]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = loss(s, t)
    assert out.dtype == torch.float32
    expected = loss([x.float() for x in s], [x.float() for x in t])
    assert torch.allclose(out, expected, rtol=1e-5)


@pytest.mark.parametrize('divergence', ['gaussian', 'sampled'])
def test_finite_on_degenerate_input(divergence):
    loss = _small_loss(divergence=divergence)
    s = [torch.zeros(1, 4, 1, 1, requires_grad=True) for _ in range(3)]
    t = [torch.zeros(1, 6, 1, 1) for _ in range(3)]
    out = loss(s, t)
    out.backward()
    assert torch.isfinite(out)
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters() if p.requires_grad)
    big = [torch.full((1, 4, 1, 1), 1e4) for _ in range(3)]
    assert torch.isfinite(loss(big, [torch.full((1, 6, 1, 1), -1e4)] * 3))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match='-0.5'):
        UniKDLoss(loss_weight=-0.5)
    with pytest.raises(ValueError, match='divergence'):
        UniKDLoss(divergence='js')
    with pytest.raises(ValueError, match='one value per level'):
        UniKDLoss(in_channels=[256, 256], num_levels=3)
    loss = _small_loss()
    with pytest.raises(ValueError, match='level 1'):
        loss(_feats(1, 4, (4, 2, 1)), [*_feats(1, 6, (4, )), *_feats(1, 4, (2, 1))])
