"""The user's path on real COCO images: train a teacher, test it with COCO mAP, distil a
student with SSIM + RCKA through the real Runner, resume, export, and test the export."""
import copy
import glob
import json
import math
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmdet.registry import MODELS

from testing_utils import (DEMO_PAIR, DEMO_STUDENT, DEMO_TEACHER, REPO, coco128_config,
                           needs_coco128, resumed_runner, run_tool, snapshot_hook)
from kd_det.analysis.curves import load_scalars
from kd_det.export import export_student

pytestmark = [needs_coco128, pytest.mark.slow, pytest.mark.stacks]


def read_test_metrics(work_dir: str) -> dict:
    files = sorted(glob.glob(osp.join(work_dir, '*', '[0-9]*_[0-9]*.json')))
    with open(files[-1]) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
    """A tiny teacher trained for one epoch on 8 coco128 images by tools/train.py."""
    root = tmp_path_factory.mktemp('teacher')
    cfg = coco128_config(str(root), 'teacher_coco128.py', DEMO_TEACHER)
    run_tool('tools/train.py', cfg, '--work-dir', str(root / 'work'))
    return cfg, str(root / 'work' / 'epoch_1.pth')


def test_tools_test_reports_coco_map(teacher, tmp_path):
    cfg, ckpt = teacher
    out = run_tool('tools/test.py', cfg, ckpt, '--work-dir', str(tmp_path))
    metrics = read_test_metrics(str(tmp_path))
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_s'):
        assert isinstance(metrics[key], float) and -1 <= metrics[key] <= 1, metrics
    assert 'coco/bbox_mAP' in out.stdout + out.stderr


@pytest.fixture(scope='module')
def distilled(teacher, tmp_path_factory):
    """One epoch of SSIM + RCKA distillation through the Runner, in this process."""
    teacher_cfg, teacher_ckpt = teacher
    root = tmp_path_factory.mktemp('distill')
    extra = f'''
model.update(teacher_config={teacher_cfg!r}, teacher_ckpt={teacher_ckpt!r},
             distill_losses=dict(
                 loss_ssim=dict(type='SSIMLoss', loss_weight=2.0),
                 loss_rcka=dict(type='RCKALoss', loss_weight=10.0, inter_weight=10.0,
                                levels=[0, 1, 2, 3])))
'''
    cfg_path = coco128_config(str(root), 'distill_coco128.py', DEMO_PAIR, extra=extra,
                              distill=True)
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = str(root / 'work')
    # mmengine reuses a visualizer of the same name made by an earlier in-process Runner
    # (and logs into that run's dir); a fresh name gives this run its own scalars.json
    cfg.visualizer.name = f'visualizer_{osp.basename(root)}'
    runner = Runner.from_cfg(cfg)
    snapshot = snapshot_hook()
    runner.register_hook(snapshot)
    runner.train()
    return dict(cfg_path=cfg_path, work_dir=cfg.work_dir, runner=runner, snapshot=snapshot,
                teacher_ckpt=teacher_ckpt)


def test_student_trains_teacher_stays(distilled):
    model = distilled['runner'].model
    before = {k[len('student.'):]: v for k, v in distilled['snapshot'].state.items()
              if k.startswith('student.')}
    after = model.student.state_dict()
    changed = [k for k in before if before[k].dtype.is_floating_point
               and not torch.equal(before[k], after[k])]
    assert any(k.startswith('backbone.') for k in changed)
    assert any(k.startswith('neck.') for k in changed)
    saved = torch.load(distilled['teacher_ckpt'])['state_dict']
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, saved[key]), key
    ckpt = torch.load(osp.join(distilled['work_dir'], 'epoch_1.pth'))
    assert not any(k.startswith('teacher') for k in ckpt['state_dict'])


def test_distillation_losses_are_logged_and_finite(distilled):
    train = load_scalars(distilled['work_dir'])['train']
    assert train, 'nothing logged'
    for key in ('loss_ssim', 'loss_rcka', 'loss_cls'):
        values = [entry[key] for entry in train if key in entry]
        assert values and all(math.isfinite(v) for v in values), key
    # SSIM loss is (1 - SSIM) / 2 * weight per level, summed over 5 levels: in (0, 10]
    assert all(0 < e['loss_ssim'] <= 10 for e in train)
    # official RCKA value: -10 * CKA per level (intra) + inter term, 4 levels
    assert all(-80 <= e['loss_rcka'] < 0 for e in train)


def test_resume_restores_student_optimizer_and_schedule(distilled):
    cfg = Config.fromfile(distilled['cfg_path'])
    cfg.work_dir = distilled['work_dir']
    cfg.train_cfg.max_epochs = 2
    cfg.resume = True
    runner = resumed_runner(cfg)
    saved = torch.load(osp.join(distilled['work_dir'], 'epoch_1.pth'))
    assert runner.iter == saved['meta']['iter'] == 2
    assert runner.epoch == 1
    state = runner.model.state_dict()
    assert set(state) == set(saved['state_dict'])
    for key, value in saved['state_dict'].items():
        assert torch.equal(state[key], value), key
    opt_state = runner.optim_wrapper.state_dict()['state']
    for idx, param_state in saved['optimizer']['state'].items():
        torch.testing.assert_close(opt_state[idx]['exp_avg'], param_state['exp_avg'])
    lr_now = runner.optim_wrapper.get_lr()['lr'][0]
    assert lr_now == pytest.approx(saved['optimizer']['param_groups'][0]['lr'])
    # the teacher came back from teacher_ckpt, not from the distillation checkpoint
    teacher_saved = torch.load(distilled['teacher_ckpt'])['state_dict']
    assert all(torch.equal(v, teacher_saved[k])
               for k, v in runner.model.teacher.state_dict().items())


def test_resume_through_tools_train_continues(distilled, tmp_path):
    out = run_tool('tools/train.py', distilled['cfg_path'], '--work-dir',
                   distilled['work_dir'], '--resume', '--cfg-options',
                   'train_cfg.max_epochs=2')
    log = out.stdout + out.stderr
    assert 'resumed epoch: 1, iter: 2' in log
    ckpt = torch.load(osp.join(distilled['work_dir'], 'epoch_2.pth'))
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 4


def test_exported_student_is_a_plain_detector(distilled, tmp_path):
    src = osp.join(distilled['work_dir'], 'epoch_1.pth')
    out = str(tmp_path / 'student.pth')
    counts = export_student(src, out)
    assert counts['kept'] > 0
    with pytest.raises(FileExistsError, match='refusing to overwrite'):
        export_student(src, out)

    student_cfg = coco128_config(str(tmp_path), 'student_coco128.py', DEMO_STUDENT)
    cfg = Config.fromfile(student_cfg)
    plain = MODELS.build(cfg.model)
    exported = torch.load(out)
    plain.load_state_dict(exported['state_dict'], strict=True)  # no missing/unexpected keys
    assert exported['meta']['dataset_meta'] == torch.load(src)['meta']['dataset_meta']

    distill_model = distilled['runner'].model
    distill_model.load_state_dict(torch.load(src)['state_dict'])
    distill_model.eval()
    plain.eval()
    data = next(iter(distilled['runner'].val_dataloader))
    with torch.no_grad():
        ours = distill_model.test_step(copy.deepcopy(data))
        theirs = plain.test_step(copy.deepcopy(data))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.pred_instances.bboxes, b.pred_instances.bboxes)
        torch.testing.assert_close(a.pred_instances.scores, b.pred_instances.scores)
        assert torch.equal(a.pred_instances.labels, b.pred_instances.labels)

    # the same COCO mAP from tools/test.py: plain config + export vs distill config + ckpt
    run_tool('tools/test.py', student_cfg, out, '--work-dir', str(tmp_path / 'plain'))
    run_tool('tools/test.py', distilled['cfg_path'], src, '--work-dir', str(tmp_path / 'kd'))
    plain_metrics = read_test_metrics(str(tmp_path / 'plain'))
    kd_metrics = read_test_metrics(str(tmp_path / 'kd'))
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert plain_metrics[key] == kd_metrics[key], key


def test_export_tool_refuses_non_distillation_checkpoints(teacher, tmp_path):
    _, teacher_ckpt = teacher
    proc = subprocess.run([sys.executable, 'tools/export_student.py', teacher_ckpt,
                           str(tmp_path / 'x.pth')], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "no 'student.' weights" in proc.stderr
    assert not osp.exists(tmp_path / 'x.pth')
