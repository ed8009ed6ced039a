"""FeatureDistillDetector: frozen hidden teacher, loss wiring, validation of its config."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmdet.registry import MODELS

import kd_det  # noqa: F401
from kd_det.checkpoint import CheckpointError
from testing_utils import DEMO_PAIR as PAIR
from testing_utils import DEMO_STUDENT as STUDENT
from testing_utils import DEMO_TEACHER as TEACHER
from testing_utils import synthetic_batch


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    teacher = MODELS.build(Config.fromfile(TEACHER).model)
    teacher.init_weights()
    path = str(tmp_path_factory.mktemp('teacher') / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict(), 'meta': {}}, path)
    return path


def model_cfg(teacher_ckpt, **overrides):
    cfg = copy.deepcopy(Config.fromfile(PAIR).model)
    cfg.teacher_ckpt = teacher_ckpt
    cfg.distill_losses = dict(loss_mse=dict(type='FeatureMSELoss', loss_weight=1.0))
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_teacher_is_frozen_hidden_and_moves_with_the_model(teacher_ckpt):
    model = MODELS.build(model_cfg(teacher_ckpt))
    saved = torch.load(teacher_ckpt)['state_dict']
    teacher_state = model.teacher.state_dict()
    assert all(torch.equal(saved[k], teacher_state[k]) for k in saved)
    assert not any(k.startswith('teacher') for k in model.state_dict())
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert not model.teacher.training
    assert not any(m.training for m in model.teacher.modules())
    model.double()
    assert next(model.teacher.parameters()).dtype == torch.float64


def test_loss_adds_distillation_terms_and_trains_only_the_student(teacher_ckpt):
    model = MODELS.build(model_cfg(teacher_ckpt, distill_losses=dict(
        loss_mse=dict(type='FeatureMSELoss', loss_weight=1.0, levels=[0, 1]),
        loss_pkd=dict(type='PKDLoss', loss_weight=6.0))))
    model.train()
    inputs, samples = synthetic_batch()
    torch.manual_seed(2)  # same proposal sampling in both calls
    student_only = model.student.loss(inputs, samples)
    torch.manual_seed(2)
    losses = model.loss(inputs, samples)
    assert set(losses) == set(student_only) | {'loss_mse', 'loss_pkd'}
    # the student's own losses are unchanged by distillation
    torch.testing.assert_close(losses['loss_cls'], student_only['loss_cls'])
    # loss_mse is the sum over its levels of the per-level loss
    s_feats = model.student.extract_feat(inputs)
    t_feats = model.teacher.extract_feat(inputs)
    expected = sum(((s_feats[i] - t_feats[i]) ** 2).mean() for i in (0, 1))
    torch.testing.assert_close(losses['loss_mse'], expected)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total = sum(v for k, v in losses.items() if k.startswith('loss') and torch.is_tensor(v)
                and v.dim() == 0)
    total.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.backbone.conv1.weight.grad is not None
    opt.step()
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_predict_is_the_students(teacher_ckpt):
    model = MODELS.build(model_cfg(teacher_ckpt)).eval()
    inputs, samples = synthetic_batch(1)
    with torch.no_grad():
        ours = model.predict(inputs, copy.deepcopy(samples))[0].pred_instances
        theirs = model.student.predict(inputs, copy.deepcopy(samples))[0].pred_instances
    torch.testing.assert_close(ours.bboxes, theirs.bboxes)
    torch.testing.assert_close(ours.scores, theirs.scores)


def test_missing_teacher_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='no_such_teacher.pth'):
        MODELS.build(model_cfg(str(tmp_path / 'no_such_teacher.pth')))


def test_teacher_checkpoint_of_another_model_is_refused(tmp_path):
    student = MODELS.build(Config.fromfile(STUDENT).model)
    path = str(tmp_path / 'student_as_teacher.pth')
    torch.save({'state_dict': student.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r'does not fit teacher_config.*shape mismatches'):
        MODELS.build(model_cfg(path))


def test_distillation_checkpoint_as_teacher_gets_a_hint(teacher_ckpt, tmp_path):
    model = MODELS.build(model_cfg(teacher_ckpt))
    path = str(tmp_path / 'distill.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    with pytest.raises(CheckpointError, match='export_student'):
        MODELS.build(model_cfg(path))


def test_non_strict_teacher_loads_what_fits(teacher_ckpt, tmp_path):
    state = torch.load(teacher_ckpt)['state_dict']
    dropped = 'roi_head.bbox_head.fc_cls.weight'
    state.pop(dropped)
    path = str(tmp_path / 'partial.pth')
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointError, match=dropped):
        MODELS.build(model_cfg(path))
    model = MODELS.build(model_cfg(path, teacher_strict=False))
    key = 'backbone.conv1.weight'
    assert torch.equal(model.teacher.state_dict()[key], state[key])


@pytest.mark.parametrize('losses, error, match', [
    (dict(loss_ssim=dict(type='SSIMLos')), KeyError, r"unknown type 'SSIMLos'.*SSIMLoss"),
    (dict(loss_ssim=dict(type='SSIMLoss', loss_wieght=2.0)), KeyError,
     r"no option\(s\) \['loss_wieght'\].*loss_weight"),
    (dict(loss_ssim=dict(type='SSIMLoss', loss_weight=-1.0)), ValueError, 'loss_weight=-1.0'),
    (dict(loss_ssim=dict(type='SSIMLoss', levels=[0, 5])), ValueError,
     r'levels \[0, 5\] invalid.*\[0, 5\)'),
    (dict(ssim=dict(type='SSIMLoss')), ValueError, "'ssim' must start with 'loss_'"),
    (dict(), ValueError, 'non-empty dict'),
])
def test_bad_distill_losses_are_named(teacher_ckpt, losses, error, match):
    with pytest.raises(error, match=match):
        MODELS.build(model_cfg(teacher_ckpt, distill_losses=losses))


@pytest.mark.parametrize('overrides, match', [
    (dict(spatial_align='nearest'), r"spatial_align='nearest' is not one of"),
    (dict(nonfinite='ignore'), r"nonfinite='ignore' is not one of"),
    (dict(connectors=dict(in_channel=64, out_channels=64)), 'expected keys in_channels'),
])
def test_bad_options_are_named(teacher_ckpt, overrides, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(model_cfg(teacher_ckpt, **overrides))


def test_channel_mismatch_needs_connectors(teacher_ckpt):
    cfg = model_cfg(teacher_ckpt)
    cfg.student.neck.out_channels = 32
    cfg.student.rpn_head.update(in_channels=32, feat_channels=32)
    cfg.student.roi_head.bbox_roi_extractor.out_channels = 32
    cfg.student.roi_head.bbox_head.in_channels = 32
    with pytest.raises(ValueError, match=r'32 channels.*teacher neck 64.*connectors'):
        MODELS.build(cfg)
    cfg.connectors = dict(in_channels=32, out_channels=64)
    model = MODELS.build(cfg)
    inputs, samples = synthetic_batch()
    losses = model.loss(inputs, samples)
    with torch.no_grad():  # reference: the modules called directly, levels paired by stride
        s_feats = model.student.extract_feat(inputs)
        t_feats = model.teacher.extract_feat(model.teacher_inputs(inputs))
        expected = sum(F.mse_loss(model.connectors[lvl](s), t)
                       for lvl, (s, t) in enumerate(zip(s_feats, t_feats)))
    torch.testing.assert_close(losses['loss_mse'].detach(), expected)
    losses['loss_mse'].backward()
    assert model.connectors[0].conv.weight.grad is not None


def test_spatial_mismatch_is_rejected_or_resized(teacher_ckpt):
    model = MODELS.build(model_cfg(teacher_ckpt, distill_losses=dict(
        loss_mse=dict(type='FeatureMSELoss', levels=[0]))))
    student = [torch.randn(2, 64, 8, 8)]
    teacher = [torch.randn(2, 64, 16, 16)]
    with pytest.raises(ValueError,
                       match=r'\(2, 64, 8, 8\).*\(2, 64, 16, 16\).*differ in size although'):
        model.distill_loss(dict(neck=student), dict(neck=teacher), [])
    model.spatial_align = 'interpolate'
    losses = model.distill_loss(dict(neck=student), dict(neck=teacher), [])
    resized = F.interpolate(student[0], size=(16, 16), mode='bilinear', align_corners=False)
    torch.testing.assert_close(losses['loss_mse'], F.mse_loss(resized, teacher[0]))


def test_nonfinite_loss_names_loss_and_level(teacher_ckpt):
    model = MODELS.build(model_cfg(teacher_ckpt))
    feats = [torch.randn(1, 64, 4, 4) for _ in range(5)]
    teacher = [f + 1 for f in feats]  # an MSE of 1 on each level
    teacher[3][0, 0, 0, 0] = float('nan')
    with pytest.raises(FloatingPointError, match=r'loss_mse \(level 3\)'):
        model.distill_loss(dict(neck=feats), dict(neck=teacher), [])
    model = MODELS.build(model_cfg(teacher_ckpt, nonfinite='skip'))
    losses = model.distill_loss(dict(neck=feats), dict(neck=teacher), [])
    # level 3 dropped, the other four levels summed
    torch.testing.assert_close(losses['loss_mse'], torch.tensor(4.0))


def test_teacher_with_other_normalisation_gets_its_own_inputs(teacher_ckpt):
    cfg = model_cfg(teacher_ckpt)
    teacher_cfg = Config.fromfile(TEACHER)
    teacher_cfg.model.data_preprocessor.update(mean=[103.53, 116.28, 123.675],
                                               std=[1.0, 1.0, 1.0], bgr_to_rgb=False)
    cfg.teacher_config = teacher_cfg.to_dict()
    model = MODELS.build(cfg)
    raw = torch.rand(1, 3, 8, 8) * 255  # BGR, as loaded by mmcv
    student_pre = model.data_preprocessor
    rgb = raw.flip(1)
    x_student = (rgb - student_pre.mean) / student_pre.std
    x_teacher = raw - torch.tensor([103.53, 116.28, 123.675]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.teacher_inputs(x_student), x_teacher, rtol=1e-5, atol=1e-3)


def test_a_deep_copy_shares_the_frozen_teacher(teacher_ckpt):
    """mmengine's EMA deep-copies the model: the copy must not hold a second teacher."""
    model = MODELS.build(model_cfg(teacher_ckpt))
    clone = copy.deepcopy(model)
    assert clone.teacher is model.teacher
    assert clone.student is not model.student
    for (name, p), q in zip(model.named_parameters(), clone.parameters()):
        assert p is not q and torch.equal(p, q), name
    assert 'teacher' not in clone._modules and not any(
        k.startswith('teacher') for k in clone.state_dict())
