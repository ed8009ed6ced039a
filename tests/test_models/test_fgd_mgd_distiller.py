"""FGD and MGD through the distiller: the demo configs build and train a step in which every
parameter gets a gradient, and a source they cannot read is refused at build."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS

import kd_det  # noqa: F401
from testing_utils import DEMO_TEACHER, REPO, synthetic_batch

DEMO = {name: osp.join(REPO, 'configs', 'demo', f'{name}_faster-rcnn_r34h-to-r18t_fpn_shapes.py')
        for name in ('fgd', 'mgd')}


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    teacher = MODELS.build(Config.fromfile(DEMO_TEACHER).model)
    teacher.init_weights()
    path = str(tmp_path_factory.mktemp('teacher') / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict(), 'meta': {}}, path)
    return path


def demo_model(name, teacher_ckpt, **loss_overrides):
    cfg = Config.fromfile(DEMO[name]).model
    cfg.teacher_ckpt = teacher_ckpt
    (entry, ) = cfg.distill_losses.values()
    entry.update(loss_overrides)
    return MODELS.build(cfg)


@pytest.mark.parametrize('name', ['fgd', 'mgd'])
def test_demo_config_trains_a_step_with_every_parameter_in_the_graph(name, teacher_ckpt):
    """One loss entry on four levels owns one block (pair) per level; one backward reaches
    every trainable parameter (DDP without find_unused_parameters), the teacher none."""
    model = demo_model(name, teacher_ckpt)
    model.train()
    loss_module = model.distill_losses[f'loss_{name}']
    assert loss_module.num_levels == 4 and loss_module.channels == 64
    inputs, samples = synthetic_batch(2, 64)
    losses = model.loss(inputs, samples)
    value = losses[f'loss_{name}']
    assert value.shape == () and torch.isfinite(value) and float(value.detach()) > 0
    total, _ = model.parse_losses(losses)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(p.grad is None for p in model.teacher.parameters())


def test_fgd_on_the_backbone_is_refused_at_build(teacher_ckpt):
    with pytest.raises(ValueError, match=r"loss_fgd'\]: FGDLoss cannot read "
                                         r"source='backbone'.*set source='neck'"):
        demo_model('fgd', teacher_ckpt, source='backbone')


@pytest.mark.parametrize('name', ['fgd', 'mgd'])
def test_a_narrower_student_goes_through_the_connectors(name, teacher_ckpt):
    """The official 1x1 align is the distiller's connectors: a 32-channel student FPN against
    the 64-channel teacher builds the blocks on the teacher's 64 channels, and the connectors
    are trained by the loss."""
    cfg = Config.fromfile(DEMO[name]).model
    cfg.teacher_ckpt = teacher_ckpt
    cfg.student.neck.out_channels = 32
    cfg.student.rpn_head.update(in_channels=32, feat_channels=32)
    cfg.student.roi_head.bbox_roi_extractor.out_channels = 32
    cfg.student.roi_head.bbox_head.in_channels = 32
    cfg.connectors = dict(in_channels=32, out_channels=64)
    model = MODELS.build(cfg)
    assert model.distill_losses[f'loss_{name}'].channels == 64
    inputs, samples = synthetic_batch(2, 64)
    model.loss(inputs, samples)[f'loss_{name}'].backward()
    assert all(model.connectors[lvl].conv.weight.grad is not None for lvl in range(4))
