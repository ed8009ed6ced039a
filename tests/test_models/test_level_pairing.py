"""Level strides read off real mmdet configs, and student/teacher levels paired by stride."""
import pytest
import torch
from mmdet.registry import MODELS
from torch import nn

import kd_det  # noqa: F401
from kd_det.models import load_config
from kd_det.models.level_pairing import explicit_pairs, level_strides, pair_levels

FASTER = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
RETINANET = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
DINO = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'   # ChannelMapper neck, no priors
YOLOF = 'mmdet::yolof/yolof_r50-c5_8xb8-1x_coco.py'     # one-level neck (DilatedEncoder)

_built = {}


def build(config):
    if config not in _built:
        cfg = load_config(config).model
        cfg.backbone.init_cfg = None
        _built[config] = MODELS.build(cfg)
    return _built[config]


@pytest.mark.parametrize('config, strides', [
    (FASTER, [4, 8, 16, 32, 64]),
    (RETINANET, [8, 16, 32, 64, 128]),
    (DINO, [8, 16, 32, 64]),
    (YOLOF, [32]),
])
def test_neck_strides_of_real_configs(config, strides):
    assert level_strides(build(config), 'neck') == strides


def test_backbone_strides_are_measured_and_leave_no_trace():
    model = build(FASTER)
    model.train()
    before = model.backbone.bn1.running_mean.clone()
    assert level_strides(model, 'backbone') == [4, 8, 16, 32]
    assert model.training and torch.equal(model.backbone.bn1.running_mean, before)


@pytest.mark.parametrize('student, teacher, pairs', [
    (RETINANET, FASTER, {0: 1, 1: 2, 2: 3, 3: 4}),        # student P3-P7 from teacher P2-P6
    (FASTER, RETINANET, {1: 0, 2: 1, 3: 2, 4: 3}),
    (FASTER, FASTER, {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}),
    (FASTER, DINO, {1: 0, 2: 1, 3: 2, 4: 3}),             # transformer-family teacher
    (RETINANET, YOLOF, {2: 0}),                            # one-level teacher: stride 32
])
def test_pairs_by_equal_stride(student, teacher, pairs):
    s, t = level_strides(build(student), 'neck'), level_strides(build(teacher), 'neck')
    assert pair_levels(s, t) == pairs
    assert all(s[i] == t[j] for i, j in pairs.items())


def test_no_common_stride_names_both_lists():
    with pytest.raises(ValueError, match=r'student strides \[32\], teacher strides \[4, 8\]'):
        pair_levels([32], [4, 8])


def test_underivable_strides_ask_for_level_pairs():
    class NoPriors(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 4, 1)

        def extract_feat(self, x):
            raise RuntimeError('needs real images')

    with pytest.raises(ValueError, match=r'cannot derive the neck level strides.*level_pairs'):
        level_strides(NoPriors(), 'neck')


@pytest.mark.parametrize('pairs, match', [
    ([(0, 1, 2)], r'expected \(student_level, teacher_level\)'),
    ([(0, 5)], r'teacher has levels 0\.\.4, not 5'),
    ([(0, 1), (0, 2)], 'student level 0 twice'),
    ([], 'level_pairs is empty'),
])
def test_bad_explicit_pairs_are_named(pairs, match):
    with pytest.raises(ValueError, match=match):
        explicit_pairs(pairs, 5, 5)
