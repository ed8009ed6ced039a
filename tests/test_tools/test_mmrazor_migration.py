"""The config converted from MMRazor's MGD RetinaNet config (docs/migrating_from_mmrazor.md)
trains a step.

The converted config is used as shipped (its distiller, MGD entry and optimizer with
gradient clipping) except for the sizes: a COCO RetinaNet X-101 teacher and R-50 student
cannot run a step on a 2-core CPU within the suite's budget, so both backbones are replaced
by a ResNet-18 of 1/4 width (base_channels 16), the FPNs and heads by 32 channels, and the
teacher checkpoint by a random one of that shrunken teacher. The structure the conversion
is about stays: five P3-P7 levels on both sides, paired by stride, one MGD generator each.
"""
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmdet.registry import MODELS

import kd_det  # noqa: F401
from kd_det.models import load_config
from testing_utils import REPO, synthetic_batch

CONVERTED = osp.join(REPO, 'configs', 'mgd', 'mgd_retinanet_x101-64x4d-to-r50_fpn_2x_coco.py')
TINY_BACKBONE = dict(type='ResNet', depth=18, base_channels=16, num_stages=4,
                     out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False,
                     norm_cfg=dict(type='BN', requires_grad=True), style='pytorch',
                     init_cfg=None)


def shrink(model_cfg):
    model_cfg.backbone = dict(TINY_BACKBONE)
    model_cfg.neck.update(in_channels=[16, 32, 64, 128], out_channels=32)
    model_cfg.bbox_head.update(in_channels=32, feat_channels=32, stacked_convs=1)
    return model_cfg


def test_the_converted_mmrazor_mgd_config_trains_a_step(tmp_path):
    cfg = Config.fromfile(CONVERTED)
    assert cfg.model.type == 'FeatureDistillDetector'
    assert cfg.optim_wrapper.clip_grad == dict(max_norm=35, norm_type=2)
    teacher = shrink(load_config(cfg.model.teacher_config).model)
    torch.manual_seed(0)
    path = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': MODELS.build(teacher).state_dict()}, path)
    cfg.model.update(teacher_config=teacher, teacher_ckpt=path)
    shrink(cfg.model.student)
    model = MODELS.build(cfg.model)
    model.train()
    mgd = model.distill_losses['loss_mgd']
    assert (mgd.num_levels, mgd.alpha_mgd, mgd.lambda_mgd) == (5, 2e-5, 0.65)
    assert model.level_pairs['neck'] == {i: i for i in range(5)}

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    before = [p.detach().clone() for p in mgd.parameters()]
    inputs, samples = synthetic_batch(2, 64)
    total, log_vars = model.parse_losses(model.loss(inputs, samples))
    assert log_vars['loss_mgd'] > 0
    optim_wrapper.update_params(total)
    assert all(not torch.equal(b, p) for b, p in zip(before, mgd.parameters()))
