"""UniKD on source='roi_levels': the gated top-down fusion of the RoI features of every level.

The references are written from the paper's description (Huang et al., ECCV 2024, arXiv
2409.18565, "Adaptive Features Fusion": 1x1 convs to common channels; from the deepest stage
up, a conv on the concatenation of the stage and the fused deeper one, a sigmoid, two
weights; the weighted sum), not from kd_det's code: 1x1 convs as einsums, the per-RoI
standardisation as (x - mean) / sqrt(var + eps), the sigmoid as 1 / (1 + exp(-z)).
"""
import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from kd_det.losses.feature_fusion import RoILevelFusion, gated_sum
from kd_det.losses.unikd import UniKDLoss


def _standardise(x):  # per RoI over (C, S, S), biased variance, eps 1e-5 (layer norm)
    flat = x.flatten(1)
    mean, var = flat.mean(1), flat.var(1, unbiased=False)
    return (x - mean[:, None, None, None]) / torch.sqrt(var + 1e-5)[:, None, None, None]


def _conv1x1(x, conv):
    return torch.einsum('oc,rchw->rohw', conv.weight[:, :, 0, 0], x) \
        + conv.bias[None, :, None, None]


def _reference_fusion(fusion, levels):
    """The paper's fusion, deepest level first, then the mean over the RoI's positions."""
    laterals = [_conv1x1(_standardise(x), conv) for x, conv in zip(levels, fusion.laterals)]
    fused = laterals[-1]
    for lvl in reversed(range(len(levels) - 1)):
        z = _conv1x1(torch.cat([laterals[lvl], fused], 1), fusion.gates[lvl])
        w = 1 / (1 + torch.exp(-z))
        fused = w[:, 0:1] * laterals[lvl] + w[:, 1:2] * fused
    return fused.mean(dim=(2, 3))


def _levels(num_levels=3, rows=5, channels=4, size=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, channels, size, size, generator=g) * (lvl + 1) + lvl
            for lvl in range(num_levels)]


def test_gate_weights_the_two_inputs_by_the_sigmoid_of_its_two_channels():
    lateral = torch.tensor([1., 2.]).view(1, 2, 1, 1)
    deeper = torch.tensor([10., 20.]).view(1, 2, 1, 1)
    # sigmoid(0) = 1/2, sigmoid(log 3) = 3/4, sigmoid(-log 3) = 1/4
    logits = torch.tensor([0., math.log(3.)]).view(1, 2, 1, 1)
    out = gated_sum(lateral, deeper, logits)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.5 * 1 + 0.75 * 10,
                                                             0.5 * 2 + 0.75 * 20]))
    logits = torch.tensor([-math.log(3.), 0.]).view(1, 2, 1, 1)
    torch.testing.assert_close(gated_sum(lateral, deeper, logits).flatten(),
                               torch.tensor([0.25 + 5., 0.5 + 10.]))


def test_fusion_is_top_down_deepest_level_first():
    """With every gate at (1/2, 1/2) and identity laterals, top-down fusion of 4 levels
    weights them 1/2, 1/4, 1/8, 1/8 (finest first); bottom-up would give 1/8, 1/8, 1/4, 1/2."""
    levels = _levels(num_levels=4, channels=2)
    fusion = RoILevelFusion(2, 4, 2)
    with torch.no_grad():
        for conv in fusion.laterals:
            conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            conv.bias.zero_()
        for gate in fusion.gates:
            gate.weight.zero_()
            gate.bias.zero_()
    normed = [_standardise(x) for x in levels]
    expected = 0.5 * normed[0] + 0.25 * normed[1] + 0.125 * normed[2] + 0.125 * normed[3]
    torch.testing.assert_close(fusion.fuse(levels), expected)
    torch.testing.assert_close(fusion(levels), expected.mean(dim=(2, 3)))


def test_fusion_matches_the_reference_with_trained_looking_weights():
    torch.manual_seed(0)
    fusion = RoILevelFusion(4, 3, 6)
    with torch.no_grad():  # gates far from 1/2, so the order and the two weights matter
        for gate in fusion.gates:
            gate.weight.normal_(0, 1)
            gate.bias.normal_(0, 1)
    levels = _levels()
    torch.testing.assert_close(fusion(levels), _reference_fusion(fusion, levels))
    # the gates' order matters: the same gates applied bottom-up give another result
    swapped = RoILevelFusion(4, 3, 6)
    swapped.load_state_dict(fusion.state_dict())
    swapped.gates = torch.nn.ModuleList(reversed(list(swapped.gates)))
    assert not torch.allclose(swapped(levels), fusion(levels))


def _fusion_loss(**kwargs):
    torch.manual_seed(0)
    cfg = dict(in_channels=4, teacher_channels=5, num_classes=3, activation='softmax',
               source='roi_levels', num_levels=3, fused_channels=6)
    cfg.update(kwargs)
    return UniKDLoss(**cfg)


def _inputs(rows=5, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return (_levels(rows=rows, channels=4, seed=seed), _levels(rows=rows, channels=5,
                                                               seed=seed + 1),
            torch.randn(rows, 4, generator=g))


def test_value_is_the_closed_form_kl_and_support_of_the_fused_gaussians():
    loss = _fusion_loss(loss_weight=2.0, support_weight=0.5)
    student, teacher, logits = _inputs()

    def gaussian(fusion, predictor, levels):
        v = _reference_fusion(fusion, levels)
        v = (v - v.mean(1, keepdim=True)) / torch.sqrt(v.var(1, unbiased=False, keepdim=True)
                                                       + 1e-5)
        out = v @ predictor.fc.weight.T + predictor.fc.bias
        return out[:, :4], out[:, 4:].clamp(-5, 5)

    mu_s, lv_s = gaussian(loss.student_fusion, loss.student_predictor, student)
    mu_t, lv_t = gaussian(loss.teacher_fusion, loss.teacher_predictor, teacher)
    kl = kl_divergence(Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1),
                       Independent(Normal(mu_s, (0.5 * lv_s).exp()), 1)).mean()
    nll = -Independent(Normal(mu_t, (0.5 * lv_t).exp()), 1).log_prob(logits).mean() \
        - 2 * math.log(2 * math.pi)  # the loss leaves out the constant log(2 pi) / 2 per dim
    assert loss(student, teacher, logits).item() == pytest.approx(
        ((2.0 * kl + 0.5 * nll) / 4).item(), rel=1e-5)


def test_every_parameter_learns_and_the_teacher_side_only_from_the_support_loss():
    student, teacher, logits = _inputs()
    for x in student + teacher:
        x.requires_grad_(True)
    loss = _fusion_loss()
    loss(student, teacher, logits).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    assert all(x.grad.abs().sum() > 0 for x in student)
    assert all(x.grad is None for x in teacher)

    def grads(module):
        return sum(p.grad.abs().sum() for p in module.parameters())

    loss = _fusion_loss(support_weight=0.)  # KL alone: the teacher Gaussian is detached
    loss(student, teacher, logits).backward()
    assert grads(loss.student_fusion) > 0 and grads(loss.teacher_fusion) == 0
    loss = _fusion_loss(loss_weight=0.)  # support alone: the teacher side only
    loss(student, teacher, logits).backward()
    assert grads(loss.teacher_fusion) > 0 and grads(loss.student_fusion) == 0


def test_no_rois_gives_attached_zero():
    loss = _fusion_loss()
    student = [torch.zeros(0, 4, 7, 7, requires_grad=True) for _ in range(3)]
    out = loss(student, [torch.zeros(0, 5, 7, 7)] * 3, torch.zeros(0, 4))
    out.backward()
    assert out.item() == 0
    assert all(p.grad is not None for p in loss.parameters())


def test_fused_channels_default_to_the_students_width():
    loss = _fusion_loss(fused_channels=None)
    assert loss.student_fusion.laterals[0].out_channels == 4
    assert loss.teacher_fusion.laterals[0].out_channels == 4
    assert loss.teacher_predictor.fc.in_features == 4


def test_rejects_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match=r"UniKDLoss reads source \['roi_embed', "
                       r"'roi_levels'\], got source='roi_cls'"):
        _fusion_loss(source='roi_cls')
    with pytest.raises(ValueError, match='needs num_levels'):
        _fusion_loss(num_levels=None)
    with pytest.raises(ValueError, match=r"num_levels=3 .* with source='roi_embed' leave"):
        _fusion_loss(source='roi_embed')
    with pytest.raises(ValueError, match='at least 2 levels'):
        RoILevelFusion(4, 1, 4)
    student, teacher, logits = _inputs()
    loss = _fusion_loss()
    with pytest.raises(ValueError, match=r'expected student 3 x \(R, 4, S, S\), teacher '
                       r'3 x \(R, 5, S, S\).* got \[\(5, 4, 3, 3\), \(5, 4, 3, 3\)\]'):
        loss(student[:2], teacher, logits)
    with pytest.raises(ValueError, match=r'got \[\(5, 5, 3, 3\)'):
        loss(teacher, teacher, logits)
    with pytest.raises(ValueError, match=r'got \(5, 4, 3, 3\), '):
        loss(student[0], teacher, logits)
    with pytest.raises(ValueError, match=r'teacher_logits \(R, 4\)'):
        loss(student, teacher, logits[:, :3])


def test_float32_under_bf16_autocast():
    loss = _fusion_loss()
    student, teacher, logits = _inputs()

    def bf16(levels):
        return [x.bfloat16() for x in levels]

    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = loss(bf16(student), bf16(teacher), logits.bfloat16())
    assert out.dtype == torch.float32
    expected = loss([x.float() for x in bf16(student)], [x.float() for x in bf16(teacher)],
                    logits.bfloat16().float())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
