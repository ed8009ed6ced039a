import pytest
import torch
import torch.nn.functional as F
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData
from torch.distributions import Independent, Normal, kl_divergence

from kd_det.losses.unikd import (AdaptiveFeatureFusion, UniKDLoss, gaussian_kl, pool_boxes,
                                 sampled_softmax_kl)

STRIDES = (4, 8, 16)


def _feats(n, channels, sizes, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, s, s, generator=g).requires_grad_(requires_grad)
            for s in sizes]


def _small_loss(**kwargs):
    torch.manual_seed(0)
    cfg = dict(in_channels=4, teacher_channels=6, num_levels=3, fused_channels=8,
               embed_dim=5, pooling='image')
    cfg.update(kwargs)
    return UniKDLoss(**cfg)


def _samples(boxes_per_image):
    samples = []
    for boxes in boxes_per_image:
        sample = DetDataSample()
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32)
                                           .reshape(-1, 4))
        samples.append(sample)
    return samples


# Two images of 32 x 32 pixels (finest level 8 x 8 at stride 4), three boxes.
BOXES = [[[0., 0., 16., 16.], [8., 12., 32., 28.]], [[4., 4., 20., 24.]]]


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
@pytest.mark.parametrize('pooling', ['image', 'instance'])
def test_zero_for_identical_branches_and_features(divergence, pooling):
    loss = _small_loss(teacher_channels=4, divergence=divergence, pooling=pooling,
                       strides=STRIDES)
    _copy_teacher_branch_to_student(loss)
    feats = _feats(2, 4, (8, 4, 2))
    assert loss(feats, feats, _samples(BOXES)).abs().item() < 1e-6
    assert loss(feats, _feats(2, 4, (8, 4, 2), seed=1), _samples(BOXES)).item() > 0


@pytest.mark.parametrize('pooling', ['image', 'instance'])
def test_loss_is_mean_kl_per_dimension_of_predicted_gaussians(pooling):
    loss = _small_loss(loss_weight=3.0, pooling=pooling, strides=STRIDES)
    s, t = _feats(2, 4, (8, 4, 2), seed=0), _feats(2, 6, (8, 4, 2), seed=1)
    rois = torch.tensor([[0., *box] for box in BOXES[0]] + [[1., *box] for box in BOXES[1]])

    def pool(fused):
        return fused.mean(dim=(2, 3)) if pooling == 'image' else pool_boxes(fused, rois, 4, 7)

    with torch.no_grad():
        mu_s, lv_s = loss.student_predictor(pool(loss.student_fusion(s)))
        mu_t, lv_t = loss.teacher_predictor(pool(loss.teacher_fusion(t)))
    assert mu_s.shape == (2 if pooling == 'image' else 3, 5)
    expected = kl_divergence(Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1),
                             Independent(Normal(mu_s, (0.5 * lv_s).exp()), 1)).mean()
    assert torch.allclose(loss(s, t, _samples(BOXES)), 3.0 * expected / 5,
                          rtol=1e-5)  # per dimension


def test_pool_boxes_reads_the_right_image_at_the_stride():
    fused = torch.arange(2.)[:, None, None, None].expand(2, 3, 8, 8)  # image i is i
    rois = torch.tensor([[1., 0., 0., 8., 8.], [0., 4., 4., 20., 24.], [1., 16., 0., 32., 32.]])
    assert torch.equal(pool_boxes(fused, rois, 4, 7), torch.tensor([1., 0., 1.])[:, None]
                       .expand(3, 3))
    # a map with one hot cell: only the box over it sees it (stride 4: pixels 20..24)
    hot = torch.zeros(1, 1, 8, 8)
    hot[0, 0, 5, 5] = 49.
    pooled = pool_boxes(hot, torch.tensor([[0., 16., 16., 28., 28.], [0., 0., 0., 12., 12.]]),
                        4, 3)
    assert pooled[0, 0] > 1 and pooled[1, 0] == 0


def _structured_feats(num_images=4, boxes_per_image=3, channels=6, seed=0):
    """Objects on a background: every level is one background vector (the same in every
    image, plus a little noise) with each box filled with a vector of its own."""
    g = torch.Generator().manual_seed(seed)
    background = torch.randn(channels, generator=g)
    feats = [background[None, :, None, None] + 0.05 * torch.randn(
        num_images, channels, 64 // s, 64 // s, generator=g) for s in STRIDES]
    boxes = []
    for i in range(num_images):
        boxes.append([])
        for _ in range(boxes_per_image):
            x, y = (int(v) for v in torch.randint(0, 48, (2, ), generator=g))
            size = int(torch.randint(8, 17, (1, ), generator=g))
            vector = 2 * torch.randn(channels, generator=g)
            for f, s in zip(feats, STRIDES):
                f[i, :, y // s:-(-(y + size) // s), x // s:-(-(x + size) // s)] = \
                    vector[:, None, None]
            boxes[-1].append([float(x), float(y), float(x + size), float(y + size)])
    return feats, _samples(boxes)


def test_box_gaussians_vary_between_boxes_where_image_gaussians_hardly_vary():
    """On objects over a shared background, per-image Gaussians are nearly constant (the
    background dominates the pooled map) and carry little to distil; per-box ones differ
    from box to box."""
    feats, samples = _structured_feats()
    spread = {}
    for pooling in ('image', 'instance'):
        loss = _small_loss(in_channels=6, pooling=pooling, strides=STRIDES)
        with torch.no_grad():
            fused = loss.teacher_fusion(feats)
            rois = torch.cat([F.pad(s.gt_instances.bboxes, (1, 0), value=float(i))
                              for i, s in enumerate(samples)])
            mu, _ = loss.teacher_predictor(loss._pool(fused, rois if pooling == 'instance'
                                                      else None))
        spread[pooling] = mu.var(dim=0).mean().item()
    assert spread['instance'] > 10 * spread['image']


def test_instance_pooling_without_boxes_gives_attached_zero():
    loss = _small_loss(pooling='instance', strides=STRIDES)
    s = _feats(2, 4, (8, 4, 2), requires_grad=True)
    out = loss(s, _feats(2, 6, (8, 4, 2), seed=1), _samples([[], []]))
    out.backward()
    assert out.item() == 0 and s[0].grad is not None
    assert all(p.grad is not None for p in loss.parameters() if p.requires_grad)


@pytest.mark.parametrize('divergence', ['gaussian', 'sampled'])
@pytest.mark.parametrize('pooling', ['image', 'instance'])
def test_gradients_reach_student_side_only(divergence, pooling):
    loss = _small_loss(divergence=divergence, pooling=pooling, strides=STRIDES)
    s = _feats(2, 4, (8, 4, 2), requires_grad=True, seed=0)
    t = _feats(2, 6, (8, 4, 2), requires_grad=True, seed=1)
    loss(s, t, _samples(BOXES)).backward()
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
        mu_t, lv_t = loss.teacher_predictor(loss.teacher_fusion(t).mean(dim=(2, 3)))
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
                     embed_dim=128, pooling='image')
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
        UniKDLoss(in_channels=[256, 256], num_levels=3, pooling='image')
    with pytest.raises(ValueError, match="'mean'"):
        UniKDLoss(pooling='mean')
    with pytest.raises(ValueError, match='needs strides: the distiller sets them'):
        UniKDLoss(num_levels=3)
    with pytest.raises(ValueError, match=r'2 strides \(4, 8\) for 3 levels'):
        UniKDLoss(num_levels=3, strides=(4, 8))
    with pytest.raises(ValueError, match='one data sample per image'):
        _small_loss(pooling='instance', strides=STRIDES)(_feats(1, 4, (4, 2, 1)),
                                                         _feats(1, 6, (4, 2, 1)))
    loss = _small_loss()
    with pytest.raises(ValueError, match='level 1'):
        loss(_feats(1, 4, (4, 2, 1)), [*_feats(1, 6, (4, )), *_feats(1, 4, (2, 1))])
