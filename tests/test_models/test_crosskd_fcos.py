"""CrossKD on FCOS heads through the distiller, against an independent transcription of the
official code (jbwang1997/CrossKD@ae7fba9bb029532dfbf1d15e140dd74a99c1829e,
``mmdet/models/detectors/crosskd_fcos.py``: ``forward_hkd_single``, ``reuse_teacher_head``,
``loss_by_feat``): a second assignment by the student head's ``get_targets`` on the points,
the head layers called one by one, the distances decoded from the points by hand.

The student's FCOS assignment has no label weights: the class KD runs at every point and
both terms are averaged over the sum of the positives' centerness targets. The teacher is
in eval mode, so with ``norm_on_bbox`` its distances, and the crossed ones, are times the
stride (the official code's too, its teacher being in eval mode); the IoU of two boxes
around one point does not change when both are scaled about it, so the boxes the loss
receives are compared as well as its value.
"""
import copy
import functools

import pytest
import torch
from mmengine.config import Config
from mmdet.models.utils import unpack_gt_instances
from mmdet.registry import MODELS

import kd_det  # noqa: F401
from testing_utils import DEMO_PAIR, REPO, synthetic_batch
from official_crosskd_ld import (EPS, ref_center_kd, ref_centerness_denorm, ref_distance_boxes,
                                 ref_fcos_predict, ref_head_forward, ref_iou_log, ref_kd_qfl,
                                 ref_reuse)

DEMO = f'{REPO}/configs/demo'
RETINA = (f'{DEMO}/retinanet_r18-tiny_fpn_shapes.py', f'{DEMO}/retinanet_r34-half_fpn_shapes.py')
FCOS_HEAD = dict(
    type='FCOSHead', num_classes=7, in_channels=64, stacked_convs=2, feat_channels=64,
    strides=[8, 16, 32, 64, 128],
    loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
    loss_bbox=dict(type='IoULoss', loss_weight=1.0),
    loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0))
# the FCOS variant of mmdet's "tricks" configs: distances / stride, centerness on reg
TRICKS = dict(norm_on_bbox=True, centerness_on_reg=True, center_sampling=True)
# CrossKD's FCOS config: KD quality focal loss (weight 0.4), IoU (weight 0.75)
CROSS_FCOS = dict(
    loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls', loss_weight=0.4),
    loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg', loss_weight=0.75,
                     box_loss=dict(type='IoULoss')))


@functools.lru_cache(maxsize=None)
def _parsed(path):
    return Config.fromfile(path)


def fcos(config, head=None, **options):
    """The demo RetinaNet detector as FCOS (same levels), its head ``head`` (FCOSHead)."""
    model = copy.deepcopy(_parsed(config)).model
    model.type, model.train_cfg = 'FCOS', None
    model.bbox_head = Config(dict(FCOS_HEAD, **options, **({'type': head} if head else {})))
    return model


def checkpoint(tmp_path, model_cfg):
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()
    # a non-trivial teacher: random predictor biases, not the focal-loss prior, and distances
    # mostly above 0 (with norm_on_bbox they are clamped at 0: boxes would be points)
    for p in model.bbox_head.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    if hasattr(model.bbox_head, 'conv_reg'):
        model.bbox_head.conv_reg.bias.data.add_(1.0)
    path = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def distiller(tmp_path, losses, student, teacher, **overrides):
    cfg = copy.deepcopy(_parsed(DEMO_PAIR)).model
    cfg.student, cfg.teacher_config = student, teacher
    cfg.teacher_ckpt = checkpoint(tmp_path, teacher)
    cfg.distill_losses = losses
    cfg.update(overrides)
    torch.manual_seed(0)
    return MODELS.build(cfg)


def rows(m, d):
    return m.permute(0, 2, 3, 1).reshape(-1, d)


@pytest.mark.parametrize('options', [{}, TRICKS], ids=['plain', 'norm_on_bbox'])
def test_crosskd_fcos_is_the_official_arithmetic(tmp_path, options):
    losses_cfg = dict(CROSS_FCOS)
    if options:  # not in CrossKD's FCOS recipe; the centerness term on FCOS's own centerness
        losses_cfg['loss_center_kd'] = dict(type='CrossKDCenternessLoss',
                                            source='cross_centerness')
    model = distiller(tmp_path, losses_cfg, fcos(RETINA[0], **options),
                      fcos(RETINA[1], **options), reused_teacher_head_idx=1)
    inputs, samples = synthetic_batch(shift=3.0)
    seen = []  # the boxes CrossKDBoxLoss receives: (crossed, teacher)
    model.distill_losses['loss_reg_kd'].register_forward_pre_hook(
        lambda module, args: seen.append(args[:2]))
    losses = model.loss(inputs, samples)
    student, teacher = model.student, model.teacher
    s_head, t_head = student.bbox_head, teacher.bbox_head
    assert s_head.training and not t_head.training  # the teacher's distances: times the stride
    with torch.no_grad():
        t_out = [ref_head_forward(t_head, x, 1, ref_fcos_predict(scale, stride))
                 for x, scale, stride in zip(teacher.extract_feat(inputs), t_head.scales,
                                             t_head.strides)]
    s_out = [ref_head_forward(s_head, x, 1, ref_fcos_predict(scale, stride))
             for x, scale, stride in zip(student.extract_feat(inputs), s_head.scales,
                                         s_head.strides)]
    crossed = [ref_reuse(t_head, 1, s[1], t[1], ref_fcos_predict(scale, stride))
               for s, t, scale, stride in zip(s_out, t_out, t_head.scales, t_head.strides)]
    gts, _, _ = unpack_gt_instances(samples)
    points = s_head.prior_generator.grid_priors([s[0][0].shape[-2:] for s in s_out],
                                               device='cpu')
    labels, targets = s_head.get_targets(points, gts)
    labels, targets = torch.cat(labels), torch.cat(targets)
    pos = labels < 7
    assert pos.any()  # the student has positives
    denorm = ref_centerness_denorm(targets[pos])  # one process: no mean over GPUs
    n = inputs.size(0)
    point_rows = torch.cat([p.repeat(n, 1) for p in points])
    t_pred = [t for t, _ in t_out]
    c_cls, t_cls = (torch.cat([rows(o[0], 7) for o in out]) for out in (crossed, t_pred))
    c_dist, t_dist = (torch.cat([rows(o[1], 4) for o in out]) for out in (crossed, t_pred))
    cls_kd = 0.4 * ref_kd_qfl(c_cls, t_cls, torch.ones(len(c_cls)), denorm)
    c_boxes, t_boxes = (ref_distance_boxes(point_rows, d) for d in (c_dist, t_dist))
    # the boxes themselves (IoU is blind to scaling both boxes about their point: the stride)
    # (float32: the crossed features' statistics summed in another order, through exp)
    torch.testing.assert_close(seen[0][0], c_boxes, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen[0][1], t_boxes)
    iou = ref_iou_log(c_boxes, t_boxes)
    reg_kd = 0.75 * (iou * t_cls.max(1)[0].sigmoid()).sum() / (denorm + EPS)
    assert (t_dist > 0).float().mean() > 0.9 and (c_dist > 0).float().mean() > 0.5
    torch.testing.assert_close(losses['loss_cls_kd'], cls_kd)
    torch.testing.assert_close(losses['loss_reg_kd'], reg_kd)
    if options:
        c_center, t_center = (torch.cat([rows(o[2], 1)[:, 0] for o in out])
                              for out in (crossed, t_pred))
        center_kd = ref_center_kd(c_center, t_center, labels, 7, denorm)
        assert center_kd > 0
        torch.testing.assert_close(losses['loss_center_kd'], center_kd)
    # the KD gradients reach the student's first convs through the teacher's layers only
    sum(v for k, v in losses.items() if k in model.distill_losses).backward()
    assert s_head.cls_convs[0].conv.weight.grad.abs().sum() > 0
    assert s_head.reg_convs[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for conv in s_head.cls_convs[1:] for p in conv.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize('losses, student, teacher, message', [
    (CROSS_FCOS, dict(options=TRICKS), None,
     r'same head type, got student FCOSHead and teacher RetinaHead'),
    (dict(loss_reg_kd=dict(type='CrossKDBoxLoss', source='dense_reg')), dict(options=TRICKS),
     dict(options=TRICKS),
     r"\(CrossKDBoxLoss\) decodes the student's own distances, which its FCOSHead with "
     r"norm_on_bbox=True gives in stride units.*source='cross_reg'"),
    (CROSS_FCOS, dict(head='AutoAssignHead'), dict(head='AutoAssignHead'),
     r"the student's AutoAssignHead has its own get_targets, whose result kd_det does not "
     r'read.*FCOSHead'),
    (dict(loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg',
                           box_loss=dict(type='IoULoss', loss_weight=2.0))), {}, {},
     r"box_loss=\{'type': 'IoULoss', 'loss_weight': 2.0\} sets its own loss_weight"),
])
def test_unfit_fcos_setups_are_refused_at_build(tmp_path, losses, student, teacher, message):
    def model(side, spec):
        if spec is None:
            return copy.deepcopy(_parsed(RETINA[side])).model
        return fcos(RETINA[side], spec.get('head'), **spec.get('options', {}))
    with pytest.raises(ValueError, match=message):
        distiller(tmp_path, losses, model(0, student), model(1, teacher))
