"""``kd_det::`` config paths from this clone's editable install: bases, teacher configs,
the registry scope mmengine gives them, and the errors for bad paths."""
import os.path as osp
import subprocess
import sys

import pytest
from mmengine.hub import get_config
from mmengine.registry import HOOKS, MODELS  # the root registries, as the Runner uses

from testing_utils import REPO, write_config
from kd_det.configs import CONFIG_DIR, config_path, read_config

SSIM = 'kd_det::ssim/ssim_faster-rcnn_r101-to-r50_fpn_2x_coco.py'
DEMO_SSIM = 'kd_det::demo/ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
# mmengine's words for a `kd_det::` base read by a tool that has not imported kd_det;
# the troubleshooting table in docs/faq.md quotes them
NOT_IMPORTED = 'mmengine does not support to load kd_det config.'


def test_editable_install_links_the_repository_configs():
    assert osp.samefile(CONFIG_DIR, osp.join(REPO, 'configs'))
    assert osp.samefile(osp.join(CONFIG_DIR, '..', 'tools'), osp.join(REPO, 'tools'))


def test_user_config_inherits_a_kd_det_config(tmp_path):
    path = write_config(str(tmp_path), 'mine.py', f'_base_ = {SSIM!r}\n'
                        "model = dict(teacher_ckpt='teacher.pth')\n")
    cfg = read_config(path)
    assert cfg.model.type == 'FeatureDistillDetector'
    assert cfg.model.teacher_ckpt == 'teacher.pth'
    assert cfg.model.distill_losses.loss_ssim.loss_weight == 2.0
    assert cfg.train_cfg.max_epochs == 24  # from its mmdet:: base, through ../_base_/
    assert read_config(SSIM).model.teacher_config == cfg.model.teacher_config


def test_kd_det_scope_builds_kd_det_and_mmdet_modules(tmp_path):
    """mmengine tags a kd_det:: base's dicts with _scope_='kd_det'; the Runner builds them
    from mmengine's root registries, which find them through kd_det.registry."""
    path = write_config(str(tmp_path), 'mine.py', f'_base_ = {DEMO_SSIM!r}\n')
    cfg = read_config(path)
    assert cfg.model._scope_ == 'kd_det' and cfg.custom_hooks[0]._scope_ == 'kd_det'
    assert type(HOOKS.build(cfg.custom_hooks[0])).__name__ == 'TeacherCheckHook'
    for model in (dict(type='SSIMLoss'), dict(type='ResNet', depth=18)):
        assert type(MODELS.build(dict(model, _scope_='kd_det'))).__name__ == model['type']


def test_file_dirname_teacher_config_resolves_inside_the_package(tmp_path):
    path = write_config(str(tmp_path), 'mine.py', f'_base_ = {DEMO_SSIM!r}\n')
    teacher = read_config(path).model.teacher_config
    assert teacher.startswith(CONFIG_DIR) and osp.isfile(teacher), teacher


def test_teacher_config_by_package():
    cfg = get_config('kd_det::demo/faster-rcnn_r34-half_fpn_shapes.py')
    assert cfg.model.backbone.depth == 34


def test_unknown_base_names_the_path_and_the_folder(tmp_path):
    path = write_config(str(tmp_path), 'mine.py', "_base_ = 'kd_det::ssim/nope.py'\n")
    with pytest.raises(FileNotFoundError) as err:
        read_config(path)
    message = str(err.value)
    assert 'kd_det::ssim/nope.py' in message and CONFIG_DIR in message and path in message
    assert 'ssim' in message.split('its folders:')[1]


def test_unknown_config_argument_names_the_path_and_the_folder():
    with pytest.raises(FileNotFoundError, match=r'kd_det::nope/x\.py: no such config in '):
        config_path('kd_det::nope/x.py')
    assert config_path(SSIM) == osp.join(CONFIG_DIR, SSIM[len('kd_det::'):])


def test_tool_without_kd_det_fails_in_mmengine_as_the_faq_says(tmp_path):
    path = write_config(str(tmp_path), 'mine.py', f'_base_ = {SSIM!r}\n')
    proc = subprocess.run([sys.executable, '-c', 'import sys; from mmengine.config import '
                           'Config; Config.fromfile(sys.argv[1])', path],
                          cwd=str(tmp_path), capture_output=True, text=True)
    assert proc.returncode != 0
    assert f'AssertionError: {NOT_IMPORTED}' in proc.stderr
    with open(osp.join(REPO, 'docs', 'faq.md')) as f:
        assert NOT_IMPORTED in f.read()


def test_tools_read_any_package_config_mmengine_resolves():
    """kd_det's tools take ``mmdet::`` (any package mmengine knows) as the config itself, as
    the README's export-then-test command does; unknown ones name what is missing."""
    cfg = read_config('mmdet::faster_rcnn/faster-rcnn_r50_fpn_2x_coco.py')
    assert cfg.model.type == 'FasterRCNN' and cfg.train_cfg.max_epochs == 24
    with pytest.raises(FileNotFoundError, match=r'mmdet::faster_rcnn/nope\.py: '):
        read_config('mmdet::faster_rcnn/nope.py')
    with pytest.raises(FileNotFoundError, match=r"unknown package 'mmdett'.*'mmdet'"):
        read_config('mmdett::faster_rcnn/faster-rcnn_r50_fpn_2x_coco.py')
