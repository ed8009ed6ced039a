"""Evaluating a distillation checkpoint builds the student alone (no teacher, no download),
and the README's export-then-test commands run as written."""
import copy
import os
import os.path as osp
import pickle
import shlex
import subprocess
import sys

import pytest
import torch
from mmdet.datasets import CocoDataset
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from testing_utils import DEMO_PAIR, REPO, coco128_root, needs_coco128
from kd_det.configs import read_config
from kd_det.engine import StudentWeightsHook
from kd_det.test import student_test_config

README = osp.join(REPO, 'README.md')
NO_TEACHER = ['model.teacher_ckpt=https://127.0.0.1:9/nowhere/teacher.pth',
              'model.teacher_config=/nonexistent/teacher_config.py']


def test_a_distillation_config_tests_its_student_alone():
    cfg = Config.fromfile(DEMO_PAIR)
    cfg.merge_from_dict(dict(kv.split('=', 1) for kv in NO_TEACHER))
    student = copy.deepcopy(cfg.model.student)
    cfg = student_test_config(cfg)
    assert cfg.model == student  # the teacher's config and checkpoint are gone
    assert cfg.custom_hooks[-1] == dict(type='StudentWeightsHook')
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert not hasattr(model, 'teacher')
    # the hook gives the student's weights of a distiller's checkpoint, prefix removed
    state = {f'student.{k}': v for k, v in model.state_dict().items()}
    checkpoint = dict(state_dict=dict(state, **{'connectors.0.conv.weight': torch.zeros(1)}),
                      ema_state_dict={'module.student.x': torch.zeros(1)}, meta={})
    StudentWeightsHook().after_load_checkpoint(None, checkpoint)
    assert checkpoint['state_dict'].keys() == model.state_dict().keys()
    assert 'ema_state_dict' not in checkpoint
    plain = dict(state_dict=model.state_dict())
    StudentWeightsHook().after_load_checkpoint(None, plain)  # a plain checkpoint: as it is
    assert plain['state_dict'].keys() == model.state_dict().keys()


def readme_command(start):
    with open(README) as f:
        return next(line for line in f.read().splitlines() if line.startswith(start))


@needs_coco128
@pytest.mark.slow
def test_readme_export_then_test_commands_run_as_written(tmp_path):
    """The README's test / export / test lines, run as written in a folder holding the
    repository's tools/ and configs/ and a distillation checkpoint of the R-50 student at the
    README's path (random weights), with options that point the test data at 2 coco128
    images: the exported student with the mmdet config and the distillation checkpoint with
    the distillation config, whose teacher is unreachable, give the same predictions."""
    lines = dict(test_kd=readme_command('python tools/test.py configs/ssim/'),
                 export=readme_command('python tools/export_student.py'),
                 test_plain=readme_command('python tools/test.py mmdet::'))
    for name in ('tools', 'configs'):
        os.symlink(osp.join(REPO, name), tmp_path / name)
    _, _, config, src = shlex.split(lines['test_kd'])[:4]
    init_default_scope('mmdet')
    torch.manual_seed(0)
    student = MODELS.build(read_config(shlex.split(lines['test_plain'])[2]).model)
    os.makedirs(osp.dirname(tmp_path / src))
    state = {f'student.{k}': v for k, v in student.state_dict().items()}
    state['connectors.0.conv.weight'] = torch.zeros(1)  # the distiller's own tensors
    torch.save(dict(state_dict=state, meta=dict(dataset_meta=dict(
        classes=CocoDataset.METAINFO['classes']))), tmp_path / src)
    assert read_config(osp.join(REPO, config)).model.type == 'FeatureDistillDetector'

    root = coco128_root()

    def run(line, name, model_key='model.', extra=()):
        options = [f'test_dataloader.dataset.data_root={root}/',
                   'test_dataloader.dataset.ann_file=annotations/instances_train2017.json',
                   'test_dataloader.dataset.data_prefix.img=train2017/',
                   'test_dataloader.dataset.indices=2',
                   'test_dataloader.dataset.pipeline.1.scale=(128,128)',
                   f'test_evaluator.ann_file={root}/annotations/instances_train2017.json',
                   f'{model_key}test_cfg.rcnn.score_thr=0.0', *extra]
        words = shlex.split(line)
        if 'test.py' in line:
            words += ['--work-dir', f'work_{name}', '--out', f'{name}.pkl',
                      '--cfg-options', *options]
        proc = subprocess.run([sys.executable if w == 'python' else w for w in words],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        if 'test.py' in line:
            with open(tmp_path / f'{name}.pkl', 'rb') as f:
                return pickle.load(f)

    run(lines['export'], 'export')
    exported = run(lines['test_plain'], 'exported')
    # an unreachable teacher_ckpt and a missing teacher_config: built or read, they would fail
    kd_config = run(lines['test_kd'], 'kd_config', 'model.student.', NO_TEACHER)
    assert len(exported) == 2 and len(exported[0]['pred_instances']['bboxes']) > 0
    for a, b in zip(exported, kd_config):
        for key in ('bboxes', 'scores', 'labels'):
            assert torch.equal(a['pred_instances'][key], b['pred_instances'][key]), key
