"""The benchmarks' and tests' random teachers: initialised as training starts, reproducible
from their seed, and built without downloading pretrained weights."""
import os.path as osp

import torch

from testing_utils import REPO
from kd_det.analysis.random_weights import random_detector, without_pretrained
from kd_det.models import load_config

DINO = osp.join(REPO, 'configs', 'demo_modern', 'dino-5scale_r34-half_shapes.py')


def test_without_pretrained_drops_only_pretrained_init_cfgs_at_any_depth():
    normal = dict(type='Normal', std=0.01)
    cfg = dict(type='A', init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50'),
               head=dict(init_cfg=[dict(type='Pretrained', checkpoint='x'), normal]),
               stages=[dict(init_cfg=normal), dict(init_cfg=[dict(type='Pretrained')])])
    out = without_pretrained(cfg)
    assert out == dict(type='A', init_cfg=None, head=dict(init_cfg=[normal]),
                       stages=[dict(init_cfg=normal), dict(init_cfg=None)])
    assert cfg['init_cfg']['type'] == 'Pretrained'  # the given config is left alone


def test_a_dino_teacher_is_initialised_and_reproducible():
    """DINO creates ``level_embed`` empty and fills it only in ``init_weights()``: built
    without it, it holds whatever memory it got and two builds differ."""
    model_cfg = load_config(DINO).model
    first = random_detector(model_cfg, seed=3).state_dict()
    second = random_detector(model_cfg, seed=3).state_dict()
    other = random_detector(model_cfg, seed=4).state_dict()
    embed = first['level_embed']
    assert torch.isfinite(embed).all() and 0.5 < float(embed.std()) < 2  # normal_(): std 1
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first['level_embed'], other['level_embed'])
