"""Tap points (source 'taps') and teacher-side connectors, on the CPU-sized RTMDet pair of
configs/demo_modern in MMYOLO's recipe form (configs/rtmdet/README.md): the raw outputs of
``neck.out_convs.{0,1,2}.conv`` on both networks, the student's through a 1x1 conv + BN
(no affine, batch statistics), the teacher's through the same BN, CWD on the 3 levels."""
import copy
import functools
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmdet.registry import MODELS

import kd_det  # noqa: F401
from kd_det.models.teacher_connectors import TeacherConnectors
from testing_utils import REPO, save_random_teacher, synthetic_batch

DEMO = osp.join(REPO, 'configs', 'demo_modern')
RECIPE = osp.join(DEMO, 'cwd_rtmdet_micro-to-nano_shapes.py')
OWN_FORM = osp.join(DEMO, 'cwd-kd_rtmdet_micro-to-nano_shapes.py')
TAPS = ['neck.out_convs.0.conv', 'neck.out_convs.1.conv', 'neck.out_convs.2.conv']
NORM = dict(type='BN', affine=False, track_running_stats=False)


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    return save_random_teacher(str(tmp_path_factory.mktemp('taps') / 'teacher.pth'),
                               osp.join(DEMO, 'rtmdet_micro_shapes.py'))


@functools.lru_cache(maxsize=None)
def _parsed(path):
    return Config.fromfile(path).model


def model_cfg(teacher_ckpt, path=RECIPE, **overrides):
    cfg = copy.deepcopy(_parsed(path))
    cfg.teacher_ckpt = teacher_ckpt
    for key, value in overrides.items():  # replaced, not merged into the config's value
        cfg[key] = value
    return cfg


def raw_conv_outputs(detector):
    """Hooks on each neck level's ConvModule computing its conv by hand from the module's
    input: the raw 3x3 conv output, before the module's BN and SiLU."""
    outputs, handles = [], []
    for conv_module in detector.neck.out_convs:
        conv = conv_module.conv
        handles.append(conv_module.register_forward_pre_hook(
            lambda m, args, conv=conv: outputs.append(F.conv2d(
                args[0], conv.weight, conv.bias, conv.stride, conv.padding))))
    return outputs, handles


def batch_norm(x):
    """BN over the batch's statistics, no affine: per channel over (N, H, W)."""
    return F.batch_norm(x, None, None, training=True, eps=1e-5)


def cwd_reference(student, teacher, tau=1.0):
    """tau^2 / (N C) * sum over (N, C) of KL(softmax_HW(t / tau) || softmax_HW(s / tau))."""
    n, c = student.shape[:2]
    log_p_s = F.log_softmax(student.flatten(2) / tau, dim=-1)
    log_p_t = F.log_softmax(teacher.flatten(2) / tau, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum() * tau**2 / (n * c)


def test_recipe_loss_is_cwd_between_the_normalised_raw_convs(teacher_ckpt):
    model = MODELS.build(model_cfg(teacher_ckpt)).train()
    assert model.level_pairs['taps'] == {0: 0, 1: 1, 2: 2}
    inputs, samples = synthetic_batch(num=2, size=64)
    s_raw, s_handles = raw_conv_outputs(model.student)
    t_raw, t_handles = raw_conv_outputs(model.teacher)
    try:
        losses = model.loss(inputs, samples)
    finally:
        for handle in s_handles + t_handles:
            handle.remove()
    assert len(s_raw) == len(t_raw) == 3
    expected = 0
    for lvl, (s, t) in enumerate(zip(s_raw, t_raw)):
        conv = model.connectors[lvl].conv
        assert conv.bias is None and conv.kernel_size == (1, 1)
        s = batch_norm(F.conv2d(s, conv.weight))
        expected = expected + cwd_reference(s, batch_norm(t))
    torch.testing.assert_close(losses['loss_cwd'], expected, rtol=1e-4, atol=1e-6)
    # the taps are the convs, not the ConvModules' normalised and activated outputs
    neck_out = model.student.neck(model.student.backbone(inputs))
    assert not torch.allclose(neck_out[0], s_raw[0])
    # the hooks are gone after the step: the student's and teacher's modules carry none
    for net in (model.student, model.teacher):
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    # every trainable parameter (student, connectors) gets a gradient
    model.parse_losses(losses)[0].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_teacher_connectors_normalise_each_channel_and_hold_no_state(teacher_ckpt):
    """Each teacher level the losses get is its raw tap, per channel minus the batch mean
    over (N, H, W), over sqrt(biased variance + BN's eps 1e-5)."""
    model = MODELS.build(model_cfg(teacher_ckpt)).train()
    assert not list(model.teacher_connectors.parameters())
    assert not any(k.startswith('teacher_connectors') for k in model.state_dict())
    assert [n.num_features for n in model.teacher_connectors.norms] == [64, 64, 64]
    inputs, _ = synthetic_batch(num=2, size=64)
    t_raw, handles = raw_conv_outputs(model.teacher)
    try:
        normalised = model.teacher_outputs(inputs)['taps']
    finally:
        for handle in handles:
            handle.remove()
    for raw, got in zip(t_raw, normalised):
        mean = raw.mean((0, 2, 3), keepdim=True)
        var = ((raw - mean)**2).mean((0, 2, 3), keepdim=True)
        torch.testing.assert_close(got, (raw - mean) / (var + 1e-5).sqrt(), atol=1e-5,
                                   rtol=1e-4)
        assert got.mean((0, 2, 3)).abs().max() < 1e-5


def test_teacher_heads_read_raw_features_beside_teacher_connectors(teacher_ckpt):
    """Teacher connectors on the neck levels: the losses get the normalised levels, the
    teacher's dense head still predicts from its own raw neck."""
    model = MODELS.build(model_cfg(teacher_ckpt, OWN_FORM, teacher_connectors=dict(
        norm_cfg=NORM))).train()
    inputs, _ = synthetic_batch(num=2, size=64)
    out = model.teacher_outputs(inputs)
    with torch.no_grad():
        raw = model.teacher.extract_feat(inputs)
        dense = model.teacher.bbox_head(raw)
    for got, want in zip(out['dense'][0], dense[0]):
        torch.testing.assert_close(got, want)
    for got, want in zip(out['neck'], raw):
        torch.testing.assert_close(got, batch_norm(want), atol=1e-5, rtol=1e-4)


def test_teacher_runs_only_as_far_as_the_taps(teacher_ckpt):
    """Taps in the backbone only: the teacher's neck does not run."""
    taps = ['backbone.stage4.0.conv']
    model = MODELS.build(model_cfg(
        teacher_ckpt, taps=dict(student=taps, teacher=taps), teacher_connectors=None,
        connectors=dict(in_channels=128, out_channels=256, norm_cfg=NORM))).train()
    assert model.taps.widths('student') == [128] and model.taps.widths('teacher') == [256]
    calls = []
    handle = model.teacher.neck.register_forward_hook(lambda *args: calls.append(1))
    try:
        inputs, samples = synthetic_batch(num=2, size=64)
        losses = model.loss(inputs, samples)
    finally:
        handle.remove()
    assert calls == [] and float(losses['loss_cwd']) > 0


@pytest.mark.parametrize('side', ['student', 'teacher'])
def test_a_tap_naming_no_module_is_refused_with_the_nearest_names(teacher_ckpt, side):
    taps = dict(student=TAPS, teacher=TAPS)
    taps[side] = ['neck.out_layers.0.conv'] + TAPS[1:]  # MMYOLO's name for the layer
    with pytest.raises(ValueError) as err:
        MODELS.build(model_cfg(teacher_ckpt, taps=taps))
    message = str(err.value)
    assert f"the {side} RTMDet has no module 'neck.out_layers.0.conv'" in message
    assert "'neck.out_convs.0.conv'" in message.split('nearest names: ')[1]


@pytest.mark.parametrize('overrides, match', [
    (dict(taps=dict(student=TAPS, teacher=TAPS[:2])),
     '3 student and 2 teacher module paths'),
    (dict(taps=dict(student=TAPS, teacher=['bbox_head.rtm_cls.0'] * 3)),
     "teacher module 'bbox_head.rtm_cls.0' is outside the backbone and neck"),
    (dict(taps=dict(student=TAPS)), r'taps must be dict\(student='),
    (dict(taps=None), "reads source 'taps'.*no taps are configured"),
    (dict(feature_source='neck', teacher_connectors=None),
     "`taps` are configured, but no distillation loss reads them"),
    (dict(teacher_connectors=dict(norm_cfg=NORM, in_channels=99)),
     r'teacher_connectors\[0\] has in_channels=99, but the teacher taps level 0 has 64 '
     'channels'),
    (dict(teacher_connectors=dict(norm_cfg=dict(type='BN'))),
     r"trainable parameters \['weight', 'bias'\]"),
    (dict(teacher_connectors=[dict(norm_cfg=NORM)] * 2),
     'a list of 3'),
])
def test_bad_taps_and_teacher_connectors_are_refused_at_build(teacher_ckpt, overrides, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(model_cfg(teacher_ckpt, **overrides))


def test_teacher_connectors_on_levels_no_loss_reads_are_refused(teacher_ckpt):
    cfg = model_cfg(teacher_ckpt, OWN_FORM, feature_source='backbone',
                    teacher_connectors=dict(norm_cfg=NORM))
    cfg.distill_losses.loss_cwd.source = 'neck'
    cfg.connectors = None
    with pytest.raises(ValueError, match=r"feature_source \('backbone'\) levels, which no "):
        MODELS.build(cfg)


def test_a_teacher_level_of_another_width_is_refused_naming_both():
    connectors = TeacherConnectors([torch.nn.BatchNorm2d(8, affine=False)], [8], 'backbone')
    with pytest.raises(ValueError, match='in_channels=8, but the teacher backbone level 0 '
                                         'has 4 channels'):
        connectors([torch.randn(2, 4, 3, 3)])


def test_analysis_tools_read_the_taps(teacher_ckpt):
    """loss_balance's gradient norms and the similarity maps' features are the tapped
    levels, as the losses see them."""
    from kd_det.analysis.loss_balance import loss_gradient_norms
    from kd_det.analysis.similarity import distill_features
    model = MODELS.build(model_cfg(teacher_ckpt)).train()
    inputs, samples = synthetic_batch(num=2, size=64)
    norms = loss_gradient_norms(model, inputs, samples)['levels']
    assert len(norms['loss_cwd']) == 3 and all(n > 0 for n in norms['loss_cwd'])
    student, teacher = distill_features(model, inputs)
    assert sorted(student) == sorted(teacher) == [0, 1, 2]
    for lvl in range(3):
        assert student[lvl].shape == teacher[lvl].shape
        assert student[lvl].shape[1] == 64  # through the connectors
        assert teacher[lvl].mean((0, 2, 3)).abs().max() < 1e-5  # through the teacher BN
