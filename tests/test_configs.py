"""Every config under configs/ loads (its mmdet:: bases resolve) and builds its model."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS

from testing_utils import REPO
from kd_det.models.feature_distill_detector import load_config

CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))
RUNNABLE = [c for c in CONFIGS if '_base_' not in c.split(osp.sep)]


def test_there_are_configs():
    names = {osp.relpath(c, osp.join(REPO, 'configs')) for c in RUNNABLE}
    for method in ('ssim', 'rcka', 'feature_mse', 'pkd'):
        for sched in ('1x', '2x'):
            assert any(n.startswith(method + '/') and 'faster-rcnn_r101-to-r50' in n
                       and sched in n for n in names), (method, sched)
    assert any('retinanet' in n and n.startswith('ssim/') for n in names)
    assert any('retinanet' in n and n.startswith('rcka/') for n in names)


@pytest.fixture(scope='module')
def teacher_checkpoints(tmp_path_factory):
    """One randomly initialised checkpoint per teacher config (no download in tests)."""
    cache = {}

    def get(teacher_config: str) -> str:
        if teacher_config not in cache:
            model = MODELS.build(load_config(teacher_config).model)
            path = str(tmp_path_factory.mktemp('teachers') / f'{len(cache)}.pth')
            torch.save({'state_dict': model.state_dict()}, path)
            cache[teacher_config] = path
        return cache[teacher_config]
    return get


@pytest.mark.parametrize('path', RUNNABLE, ids=lambda p: osp.relpath(p, REPO))
def test_config_loads_and_builds(path, teacher_checkpoints):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['kd_det'], allow_failed_imports=False)
    model_cfg = cfg.model
    if model_cfg.type == 'FeatureDistillDetector':
        url = model_cfg.teacher_ckpt
        if 'configs/demo' not in path.replace(osp.sep, '/'):
            assert url.startswith('https://download.openmmlab.com/mmdetection/'), url
            assert 'r101' in url and 'r101' in model_cfg.teacher_config
        model_cfg.teacher_ckpt = teacher_checkpoints(model_cfg.teacher_config)
        for hook in cfg.custom_hooks:
            assert hook.type == 'TeacherCheckHook'
    model = MODELS.build(model_cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    if model_cfg.type == 'FeatureDistillDetector':
        assert set(model.distill_losses) == set(model_cfg.distill_losses)
