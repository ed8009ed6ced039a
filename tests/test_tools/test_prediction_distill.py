"""Prediction distillation and cross-family pairs end to end on coco128 through tools/train.py:
losses logged and finite, the pairing logged, exact resume, a student plain mmdet loads."""
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS

from testing_utils import (COCO128_DATA, DEMO_TEACHER, REPO, coco128_config, coco128_root,
                           needs_coco128, resumed_runner, run_tool, save_random_teacher,
                           write_config)
from kd_det.analysis.curves import load_scalars
from kd_det.export import export_student

pytestmark = [needs_coco128, pytest.mark.slow]
RETINA_STUDENT = osp.join(REPO, 'configs', 'demo', 'retinanet_r18-tiny_fpn_shapes.py')
RETINA_TEACHER = osp.join(REPO, 'configs', 'demo', 'retinanet_r34-half_fpn_shapes.py')
FASTER_STUDENT = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r18-tiny_fpn_shapes.py')
GFL_STUDENT = osp.join(REPO, 'configs', 'demo', 'gfl_r18-tiny_fpn_shapes.py')
GFL_TEACHER = osp.join(REPO, 'configs', 'demo', 'gfl_r34-half_fpn_shapes.py')
RETINA_80 = '''
model = dict(bbox_head=dict(num_classes=80), test_cfg=dict(score_thr=0.0))
'''


def plain_config(directory, name, base):
    """A coco128 (80 classes, 8 images) version of a demo detector config."""
    if 'retinanet' in base or 'gfl' in base:
        return write_config(directory, name, f'_base_ = {base!r}\n'
                            + COCO128_DATA.format(coco128=coco128_root(), epochs=1) + RETINA_80)
    return coco128_config(directory, name, base)


def distill_config(directory, student_cfg, teacher_cfg, teacher_ckpt, losses):
    """A FeatureDistillDetector config over two plain configs, like configs/_base_/ pairs."""
    return write_config(directory, 'distill.py', f'''
_base_ = {student_cfg!r}
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{{{_base_.model}}}},
    teacher_config={teacher_cfg!r},
    teacher_ckpt={teacher_ckpt!r},
    distill_losses={losses})
train_cfg = dict(val_interval=100)  # no evaluation: these tests check training
''')


def train_and_check(tmp_path, student_base, teacher_base, losses, logged):
    d = str(tmp_path)
    student_cfg = plain_config(d, 'student.py', student_base)
    teacher_cfg = plain_config(d, 'teacher.py', teacher_base)
    ckpt = save_random_teacher(osp.join(d, 'teacher.pth'), teacher_cfg)
    cfg_path = distill_config(d, student_cfg, teacher_cfg, ckpt, losses)
    work = osp.join(d, 'work')
    out = run_tool('tools/train.py', cfg_path, '--work-dir', work)
    train = load_scalars(work)['train']
    for key in logged:
        values = [entry[key] for entry in train if key in entry]
        assert values and all(math.isfinite(v) for v in values), key
    saved = osp.join(work, 'epoch_1.pth')

    cfg = Config.fromfile(cfg_path)
    cfg.work_dir, cfg.resume, cfg.load_from = work, True, saved
    runner = resumed_runner(cfg)  # resumes exactly: every saved tensor comes back
    state, checkpoint = runner.model.state_dict(), torch.load(saved)
    assert set(state) == set(checkpoint['state_dict'])
    assert all(torch.equal(state[k], v) for k, v in checkpoint['state_dict'].items())
    assert runner.iter == checkpoint['meta']['iter'] == 2

    exported = osp.join(d, 'student.pth')
    export_student(saved, exported)
    plain = MODELS.build(Config.fromfile(student_cfg).model)
    plain.load_state_dict(torch.load(exported)['state_dict'], strict=True)
    return out.stdout + out.stderr


def test_faster_rcnn_with_whole_unikd_and_rrd_on_roi_embeddings(tmp_path):
    losses = '''dict(
        loss_unikd=dict(type='UniKDLoss', source='roi_embed', warmup_iters=2),
        loss_unikd_logits=dict(type='LogitKDLoss', source='roi_cls', temperature=4.0),
        loss_rrd=dict(type='RRDLoss', source='roi_embed', queue_size=256))'''
    train_and_check(tmp_path, FASTER_STUDENT, DEMO_TEACHER, losses,
                    ['loss_unikd', 'loss_unikd_logits', 'loss_rrd', 'loss_cls'])


def test_retinanet_with_sigmoid_logit_kd(tmp_path):
    losses = "dict(loss_kd=dict(type='LogitKDLoss', source='dense_cls', temperature=2.0))"
    train_and_check(tmp_path, RETINA_STUDENT, RETINA_TEACHER, losses, ['loss_kd', 'loss_cls'])


def test_gfl_with_crosskd_and_ld(tmp_path):
    losses = '''dict(
        loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls'),
        loss_reg_kd=dict(type='CrossKDBinsLoss', source='cross_reg'),
        loss_ld=dict(type='LDLoss', source='dense_reg'))'''
    train_and_check(tmp_path, GFL_STUDENT, GFL_TEACHER, losses,
                    ['loss_cls_kd', 'loss_reg_kd', 'loss_ld', 'loss_cls', 'loss_dfl'])


def test_two_stage_teacher_to_retinanet_student(tmp_path):
    losses = "dict(loss_ssim=dict(type='SSIMLoss', loss_weight=2.0))"
    log = train_and_check(tmp_path, RETINA_STUDENT, DEMO_TEACHER, losses,
                          ['loss_ssim', 'loss_cls'])
    assert ('neck level pairing (by stride): student 0 (stride 8) <- teacher 1 (stride 8), '
            'student 1 (stride 16) <- teacher 2 (stride 16), student 2 (stride 32) <- '
            'teacher 3 (stride 32), student 3 (stride 64) <- teacher 4 (stride 64)') in log
