"""kd_det.analysis.steps: the three phases the benchmark and preflight time, on every kind
of RoI source (the teacher's RoI head runs on the RoIs the student sampled in phase a)."""
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from testing_utils import REPO, save_random_teacher, synthetic_batch
from kd_det.analysis.steps import PHASES, PhaseSteps

DEMO = osp.join(REPO, 'configs', 'demo')


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    return save_random_teacher(str(tmp_path_factory.mktemp('t') / 'teacher.pth'))


@pytest.mark.parametrize('config, source', [
    ('kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py', 'roi_cls'),
    ('rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py', 'roi_embed'),
    ('unikd_faster-rcnn_r34h-to-r18t_fpn_shapes.py', 'roi_embed'),
])
def test_phases_run_and_the_distill_step_samples_the_student_steps_rois(
        teacher_ckpt, config, source):
    cfg = Config.fromfile(osp.join(DEMO, config))
    cfg.model.teacher_ckpt = teacher_ckpt
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    assert source in model.sources
    steps = PhaseSteps(cfg, model, lr=0.0, log_losses=True)
    batch = synthetic_batch(size=96)
    for phase in PHASES:
        steps.run(phase, batch, 0)
    # learning rate 0 and one seed per batch index: the student's own losses in the
    # distillation step are those of the student step, to rounding
    student, distill = steps.logs['student'][0], steps.logs['distill'][0]
    for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'):
        assert distill[key] == pytest.approx(student[key], rel=1e-5), key
    # and the step added exactly the configured distillation losses
    assert set(distill) - set(student) == set(cfg.model.distill_losses)
