"""loss_balance: per-loss, per-level gradient norms on the student's features."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS

from testing_utils import (DEMO_PAIR, DEMO_TEACHER, coco128_config, needs_coco128, run_tool,
                           save_random_teacher, synthetic_batch)
from kd_det.analysis.loss_balance import balance_table, loss_balance, loss_gradient_norms
from kd_det.models.distill_sources import StudentTaps


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    ckpt = save_random_teacher(str(tmp_path_factory.mktemp('t') / 'teacher.pth'))
    cfg = copy.deepcopy(Config.fromfile(DEMO_PAIR).model)
    cfg.teacher_ckpt = ckpt
    cfg.distill_losses = dict(loss_mse=dict(type='FeatureMSELoss', loss_weight=3.0,
                                            levels=[0, 1]),
                              loss_kd=dict(type='LogitKDLoss', source='roi_cls'))
    return MODELS.build(cfg).train()


def test_feature_loss_gradient_matches_its_closed_form(model):
    inputs, samples = synthetic_batch()
    torch.manual_seed(3)
    result = loss_gradient_norms(model, inputs, samples)
    with torch.no_grad():
        taps = StudentTaps(model.student, {'neck'})
        with taps:
            torch.manual_seed(3)
            model.student.loss(inputs, samples)
        s = taps.get('neck')
        t = model.teacher.extract_feat(inputs)
    # d/ds of 3 * mean((s - t)^2) is 6 (s - t) / numel
    for lvl in (0, 1):
        expected = (6 * (s[lvl] - t[lvl]) / s[lvl].numel()).norm()
        assert result['levels']['loss_mse'][lvl] == pytest.approx(float(expected), rel=1e-4)
    assert result['levels']['loss_mse'][2:] == [0.0, 0.0, 0.0]
    # the RoI logit loss reaches the student's features through its RoI head (on 64 px
    # images the RoIs pool from the finest levels, by the RoI extractor's mapping)
    assert result['levels']['loss_kd'][0] > 0 and result['levels']['loss_kd'][4] == 0
    # the detector's own losses include the RPN's per-level lists, which reach level 4
    assert result['levels']['detector'][0] > 0 and result['levels']['detector'][4] > 0
    assert result['total'] > 0


def test_table_has_a_row_per_loss_and_level_and_the_clip_line(model):
    result = loss_balance(model, [synthetic_batch(), synthetic_batch()], max_norm=1e-9)
    assert result['clipped'] == 2
    table = balance_table(result, 1e-9)
    assert table.count('| loss_mse |') == 5 and table.count('| loss_kd |') == 5
    assert 'exceeded in 2 of 2 batches' in table


@pytest.mark.slow
@needs_coco128
def test_tool_runs_on_real_batches(tmp_path):
    teacher_cfg = coco128_config(str(tmp_path), 'teacher.py', DEMO_TEACHER)
    ckpt = save_random_teacher(str(tmp_path / 'teacher.pth'), teacher_cfg)
    extra = f'''
model.update(teacher_config={teacher_cfg!r}, teacher_ckpt={ckpt!r},
             distill_losses=dict(loss_ssim=dict(type='SSIMLoss', loss_weight=2.0)))
'''
    cfg = coco128_config(str(tmp_path), 'distill.py', DEMO_PAIR, extra=extra, distill=True)
    out = run_tool('tools/analysis/loss_balance.py', cfg, '--batches', '1').stdout
    assert out.count('| loss_ssim |') == 5
    assert 'clip_grad max_norm 10: exceeded in' in out


def test_input_gradient_norms_match_autograd_on_the_images(model):
    inputs, samples = synthetic_batch()
    torch.manual_seed(3)
    result = loss_gradient_norms(model, inputs, samples)
    images = inputs.clone().requires_grad_(True)
    torch.manual_seed(3)
    losses = model.loss(images, samples)
    for name in ('loss_mse', 'loss_kd'):
        (grad, ) = torch.autograd.grad(losses[name], images, retain_graph=True)
        assert result['inputs'][name] == pytest.approx(float(grad.norm()), rel=1e-4)
    detector = sum(v if not isinstance(v, list) else sum(v)
                   for k, v in losses.items() if k not in ('loss_mse', 'loss_kd'))
    (grad, ) = torch.autograd.grad(detector, images)
    assert result['inputs']['detector'] == pytest.approx(float(grad.norm()), rel=1e-4)
    assert inputs.grad is None and not inputs.requires_grad  # the caller's batch untouched


def test_total_norm_splits_by_owner_and_a_loss_owns_its_parameters(tmp_path):
    cfg = copy.deepcopy(Config.fromfile(DEMO_PAIR).model)
    cfg.teacher_ckpt = save_random_teacher(str(tmp_path / 'teacher.pth'))
    cfg.distill_losses = dict(loss_unikd=dict(type='UniKDLoss', source='roi_embed'))
    torch.manual_seed(0)
    model = MODELS.build(cfg).train()
    inputs, samples = synthetic_batch(shift=1.0)
    result = loss_gradient_norms(model, inputs, samples)
    # the gradients the call leaves on the parameters, summed per owner independently
    own = [p.grad for p in model.distill_losses['loss_unikd'].parameters() if p.grad is not None]
    student = [p.grad for p in model.student.parameters() if p.grad is not None]
    assert set(result['owners']) == {'student', 'distill_losses.loss_unikd'}
    assert result['owners']['distill_losses.loss_unikd'] == pytest.approx(
        float(torch.cat([g.double().flatten() for g in own]).norm()), rel=1e-5)
    assert result['owners']['student'] == pytest.approx(
        float(torch.cat([g.double().flatten() for g in student]).norm()), rel=1e-5)
    assert result['total'] ** 2 == pytest.approx(
        sum(n ** 2 for n in result['owners'].values()), rel=1e-6)
