"""Prediction sources: the teacher's heads on the student's RoIs / priors, and their checks."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmdet.registry import MODELS

import kd_det  # noqa: F401
from kd_det.models.distill_sources import StudentTaps
from testing_utils import DEMO_PAIR, DEMO_STUDENT, DEMO_TEACHER, REPO, synthetic_batch

RETINA_STUDENT = f'{REPO}/configs/demo/retinanet_r18-tiny_fpn_shapes.py'
RETINA_TEACHER = f'{REPO}/configs/demo/retinanet_r34-half_fpn_shapes.py'


def save_teacher(config, path, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(Config.fromfile(config).model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict()}, path)
    return path


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('teachers')
    return dict(faster=save_teacher(DEMO_TEACHER, str(tmp / 'faster.pth')),
                retina=save_teacher(RETINA_TEACHER, str(tmp / 'retina.pth')))


def distiller(ckpts, losses, student=DEMO_STUDENT, teacher='faster', **overrides):
    cfg = copy.deepcopy(Config.fromfile(DEMO_PAIR).model)
    cfg.student = Config.fromfile(student).model
    cfg.teacher_config = {'faster': DEMO_TEACHER, 'retina': RETINA_TEACHER}[teacher]
    cfg.teacher_ckpt = ckpts[teacher]
    cfg.distill_losses = losses
    cfg.update(overrides)
    return MODELS.build(cfg)


def test_roi_logits_are_the_teacher_heads_on_the_students_rois(ckpts):
    model = distiller(ckpts, dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=2.0),
        loss_box=dict(type='BoxDeltaKDLoss', source='roi_reg', score_thr=0.0)))
    assert model.distill_losses['loss_kd'].activation == 'softmax'
    assert model.distill_losses['loss_kd'].num_classes == 7
    inputs, samples = synthetic_batch(shift=1.0)
    seen = StudentTaps(model.student, {'roi_cls'})
    with seen:  # our own record of what the student computed
        losses = model.loss(inputs, samples)
    rois, (s_cls, s_reg) = seen.get('rois'), seen.get('roi')
    # independent reference: the teacher's own modules called directly
    with torch.no_grad():
        feats = model.teacher.extract_feat(inputs)
        head = model.teacher.roi_head
        t_cls, t_reg = head.bbox_head(head.bbox_roi_extractor(feats[:4], rois))
    out = model.teacher_outputs(inputs, rois)
    torch.testing.assert_close(out['roi'][0], t_cls)
    torch.testing.assert_close(out['roi'][1], t_reg)
    assert s_cls.shape == t_cls.shape == (rois.shape[0], 8)
    assert s_reg.shape == t_reg.shape == (rois.shape[0], 4 * 7)
    expected = F.kl_div(F.log_softmax(s_cls / 2, 1), F.softmax(t_cls / 2, 1),
                        reduction='batchmean') * 4
    torch.testing.assert_close(losses['loss_kd'], expected)
    # score_thr=0 keeps every RoI: L1 of the deltas of the teacher's top foreground class
    rows = torch.arange(rois.shape[0])
    top = F.softmax(t_cls, 1)[:, :7].argmax(1)
    expected_box = (s_reg.view(-1, 7, 4)[rows, top] - t_reg.view(-1, 7, 4)[rows, top]).abs()
    torch.testing.assert_close(losses['loss_box'], expected_box.mean())
    sum(v for k, v in losses.items() if k.startswith('loss_')
        and torch.is_tensor(v) and v.dim() == 0).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.roi_head.bbox_head.fc_cls.weight.grad.abs().sum() > 0
    assert not any(k.startswith('teacher') for k in model.state_dict())


def test_dense_logits_pair_prior_by_prior(ckpts):
    model = distiller(ckpts, dict(loss_kd=dict(type='LogitKDLoss', source='dense_cls')),
                      student=RETINA_STUDENT, teacher='retina')
    assert model.distill_losses['loss_kd'].activation == 'sigmoid'
    inputs, samples = synthetic_batch(shift=1.0)
    seen = StudentTaps(model.student, {'dense_cls'})
    with seen:
        losses = model.loss(inputs, samples)
    s_cls = seen.get('dense')[0]
    with torch.no_grad():
        t_cls = model.teacher.bbox_head(model.teacher.extract_feat(inputs))[0]
    torch.testing.assert_close(model.teacher_outputs(inputs)['dense'][0][2], t_cls[2])

    def rows(maps):  # (N, A * K, H, W) -> (N * H * W * A, K), as mmdet's loss_by_feat
        return torch.cat([m.permute(0, 2, 3, 1).reshape(-1, 7) for m in maps])
    s, t = rows(s_cls), rows(t_cls)
    p, q = torch.sigmoid(t), torch.sigmoid(s)
    expected = (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).sum(1).mean()
    torch.testing.assert_close(losses['loss_kd'], expected, rtol=1e-4, atol=1e-6)


def test_two_stage_teacher_to_one_stage_student_pairs_by_stride(ckpts):
    model = distiller(ckpts, dict(loss_mse=dict(type='FeatureMSELoss')),
                      student=RETINA_STUDENT)
    assert model.level_pairs['neck'] == {0: 1, 1: 2, 2: 3, 3: 4}
    assert model.loss_inputs['loss_mse'].levels == [0, 1, 2, 3]
    inputs, samples = synthetic_batch(shift=1.0)
    losses = model.loss(inputs, samples)
    s = model.student.extract_feat(inputs)
    t = model.teacher.extract_feat(inputs)
    expected = sum(F.mse_loss(s[i], t[i + 1]) for i in range(4))
    torch.testing.assert_close(losses['loss_mse'], expected)
    with pytest.raises(ValueError, match=r'student level\(s\) \[4\] have no teacher level'):
        distiller(ckpts, dict(loss_mse=dict(type='FeatureMSELoss', levels=[3, 4])),
                  student=RETINA_STUDENT)
    explicit = distiller(ckpts, dict(loss_mse=dict(type='FeatureMSELoss', levels=[0])),
                         student=RETINA_STUDENT, level_pairs=[(0, 0)],
                         spatial_align='interpolate')
    assert explicit.level_pairs['neck'] == {0: 0}


def test_derived_options_are_set_and_disagreeing_ones_refused(ckpts):
    rrd = dict(type='RRDLoss', mode='instance', queue_size=64)
    model = distiller(ckpts, dict(loss_rrd=rrd))
    loss = model.distill_losses['loss_rrd']
    assert loss.finest_scale == 28 and loss.strides == (4, 8, 16, 32, 64)
    assert loss.num_levels == 5 and loss.in_channels == 64
    with pytest.raises(ValueError, match=r'finest_scale=56 disagrees.*finest_scale=28'):
        distiller(ckpts, dict(loss_rrd=dict(rrd, finest_scale=56)))
    with pytest.raises(ValueError, match=r'activation=.sigmoid. disagrees'):
        distiller(ckpts, dict(loss_kd=dict(type='LogitKDLoss', source='roi_cls',
                                           activation='sigmoid')))


@pytest.mark.parametrize('case, match', [
    ('roi_on_one_stage', r"'roi_cls' needs a two-stage student"),
    ('dense_on_two_stage', r"'dense_cls' needs a single-stage student"),
    ('classes', r'differ in num_classes: student 7, teacher 5'),
    ('activation', r"differ in activation: student 'softmax', teacher 'sigmoid'"),
    ('typo', r"source='roi_clss' is not one of \['neck', 'backbone', 'taps', 'roi_cls'"),
    ('levels_on_rois', r'has no levels'),
])
def test_impossible_requests_are_refused(ckpts, tmp_path, case, match):
    kd = dict(type='LogitKDLoss', source='roi_cls')
    kwargs = {}
    if case == 'roi_on_one_stage':
        kwargs = dict(student=RETINA_STUDENT, teacher='retina')
    elif case == 'dense_on_two_stage':
        kd['source'] = 'dense_cls'
    elif case == 'classes':
        teacher = Config.fromfile(DEMO_TEACHER)
        teacher.model.roi_head.bbox_head.num_classes = 5
        ckpt = str(tmp_path / 't.pth')
        torch.save({'state_dict': MODELS.build(teacher.model).state_dict()}, ckpt)
        with pytest.raises(ValueError, match=match):
            distiller(dict(faster=ckpt), dict(loss_kd=kd), teacher_config=teacher.to_dict())
        return
    elif case == 'activation':
        student = Config.fromfile(RETINA_STUDENT)
        student.model.bbox_head.loss_cls = dict(type='CrossEntropyLoss', use_sigmoid=False)
        kd['source'] = 'dense_cls'
        with pytest.raises(ValueError, match=match):
            cfg = copy.deepcopy(Config.fromfile(DEMO_PAIR).model)
            cfg.student, cfg.teacher_config = student.model, RETINA_TEACHER
            cfg.teacher_ckpt, cfg.distill_losses = ckpts['retina'], dict(loss_kd=kd)
            MODELS.build(cfg)
        return
    elif case == 'typo':
        kd['source'] = 'roi_clss'
    elif case == 'levels_on_rois':
        kd['levels'] = [0]
    with pytest.raises(ValueError, match=match):
        distiller(ckpts, dict(loss_kd=kd), **kwargs)
