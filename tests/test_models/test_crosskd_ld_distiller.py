"""CrossKD and LD through the distiller, against independent transcriptions of the official code.

The references below recompute everything from the models' own modules, as the official
code does (jbwang1997/CrossKD@87e156a46259e3a516b65fc6a049b200b9ab0d54,
``mmdet/models/detectors/crosskd_{retinanet,gfl}.py``: ``forward_crosskd_single``,
``reuse_teacher_head``, ``align_scale``, ``loss_by_feat``, ``pred_mimicking_loss_single``;
@ae7fba9bb029532dfbf1d15e140dd74a99c1829e ``crosskd_atss.py``: the centerness term;
mmdet 3.3.0 ``mmdet/models/dense_heads/ld_head.py``: ``LDHead.loss_by_feat_single``): a
second assignment by the student head's ``get_targets``, the head layers called one by one,
the losses level by level.
"""
import copy
import functools

import pytest
import torch
from mmengine.config import Config
from mmdet.models.utils import images_to_levels, unpack_gt_instances
from mmdet.registry import MODELS

import kd_det  # noqa: F401
from testing_utils import DEMO_PAIR, DEMO_STUDENT, REPO, synthetic_batch
from official_crosskd_ld import (EPS, ref_atss_predict, ref_center_kd, ref_giou,
                                 ref_head_forward, ref_kd_qfl, ref_kl, ref_reuse)

DEMO = f'{REPO}/configs/demo'
CONFIGS = dict(retina=(f'{DEMO}/retinanet_r18-tiny_fpn_shapes.py',
                       f'{DEMO}/retinanet_r34-half_fpn_shapes.py'),
               gfl=(f'{DEMO}/gfl_r18-tiny_fpn_shapes.py', f'{DEMO}/gfl_r34-half_fpn_shapes.py'))
CROSS_RETINA = dict(loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls'),
                    loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg'))
CROSS_ATSS = dict(CROSS_RETINA, loss_center_kd=dict(type='CrossKDCenternessLoss',
                                                   source='cross_centerness'))
CROSS_GFL = dict(loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls'),
                 loss_reg_kd=dict(type='CrossKDBinsLoss', source='cross_reg'),
                 loss_ld=dict(type='LDLoss', source='dense_reg'))


@functools.lru_cache(maxsize=None)
def _parsed(path):
    return Config.fromfile(path)


def read(path):
    """A config file, parsed once per module (mmdet:: bases take seconds to resolve)."""
    return copy.deepcopy(_parsed(path))


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('teachers')
    out = {}
    for name, (_, teacher) in CONFIGS.items():
        torch.manual_seed(0)
        model = MODELS.build(read(teacher).model)
        model.init_weights()
        # a non-trivial teacher: random predictor biases, not the focal-loss prior
        for p in model.bbox_head.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
        out[name] = str(tmp / f'{name}.pth')
        torch.save({'state_dict': model.state_dict()}, out[name])
    return out


def distiller(ckpts, pair, losses, student=None, **overrides):
    cfg = read(DEMO_PAIR).model
    cfg.student = read(student).model if isinstance(student, str) else \
        student or read(CONFIGS[pair][0]).model
    cfg.teacher_config, cfg.teacher_ckpt = read(CONFIGS[pair][1]).model, ckpts[pair]
    cfg.distill_losses = losses
    cfg.update(overrides)
    torch.manual_seed(0)
    return MODELS.build(cfg)


def gfl_predict(scale):
    return lambda head, cls, reg: (head.gfl_cls(cls), scale(head.gfl_reg(reg)).float())


def rows(m, d):
    return m.permute(0, 2, 3, 1).reshape(-1, d)


ATSS_HEAD = dict(
    type='ATSSHead', num_classes=7, in_channels=64, stacked_convs=2, feat_channels=64,
    anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=8,
                          scales_per_octave=1, strides=[8, 16, 32, 64, 128]),
    bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
    loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
    loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0))


def atss(config):
    """The demo GFL detector with mmdet's ATSS head (same levels, one anchor per location)."""
    model = read(config).model
    model.type, model.bbox_head = 'ATSS', Config(ATSS_HEAD)
    return model


@pytest.fixture(scope='module')
def atss_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = MODELS.build(atss(CONFIGS['gfl'][1]))
    model.init_weights()
    for p in model.bbox_head.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp('atss') / 'atss.pth')
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def retina_predict(head, cls, reg):
    return head.retina_cls(cls), head.retina_reg(reg)


@pytest.mark.parametrize('head, k', [('retina', 1), ('retina', 2), ('atss', 1)])
def test_crosskd_anchor_heads_are_the_official_arithmetic(ckpts, atss_ckpt, head, k):
    if head == 'atss':
        model = distiller(ckpts, 'gfl', CROSS_ATSS, student=atss(CONFIGS['gfl'][0]),
                          teacher_config=atss(CONFIGS['gfl'][1]), teacher_ckpt=atss_ckpt)
    else:
        model = distiller(ckpts, 'retina', CROSS_RETINA, reused_teacher_head_idx=k)
    inputs, samples = synthetic_batch(shift=3.0)
    losses = model.loss(inputs, samples)
    student, teacher = model.student, model.teacher
    s_head, t_head = student.bbox_head, teacher.bbox_head
    predict = (lambda scale: retina_predict) if head == 'retina' else ref_atss_predict
    scales = getattr(t_head, 'scales', [None] * 5)
    with torch.no_grad():
        t_out = [ref_head_forward(t_head, x, k, predict(sc))
                 for x, sc in zip(teacher.extract_feat(inputs), scales)]
    s_out = [ref_head_forward(s_head, x, k, predict(sc))
             for x, sc in zip(student.extract_feat(inputs), getattr(s_head, 'scales', scales))]
    crossed = [ref_reuse(t_head, k, s[1], t[1], predict(sc))
               for s, t, sc in zip(s_out, t_out, scales)]
    gts, _, metas = unpack_gt_instances(samples)
    anchors, valid = s_head.get_anchors([o[0][0].shape[-2:] for o in s_out], metas, 'cpu')
    if head == 'retina':
        level_anchors = images_to_levels([torch.cat(a) for a in anchors],
                                         [a.size(0) for a in anchors[0]])
        labels, label_weights, _, _, avg_factor = s_head.get_targets(anchors, valid, gts, metas)
    else:
        level_anchors, labels, label_weights, _, _, avg_factor = s_head.get_targets(
            anchors, valid, gts, metas)
    k_cls = s_head.cls_out_channels
    cls_kd = reg_kd = center_kd = 0
    for (c_cls, c_reg, *c_center), (t, _), lw, anc, lab in zip(
            crossed, t_out, label_weights, level_anchors, labels):
        t_cls, lw = rows(t[0], k_cls), lw.reshape(-1)
        cls_kd = cls_kd + ref_kd_qfl(rows(c_cls, k_cls), t_cls, lw, avg_factor)
        coder, anc = s_head.bbox_coder, anc.reshape(-1, 4)
        w = t_cls.max(1)[0].sigmoid()
        w[lw == 0] = 0
        giou = ref_giou(coder.decode(anc, rows(c_reg, 4)), coder.decode(anc, rows(t[1], 4)))
        reg_kd = reg_kd + (giou * w).sum() / (avg_factor + EPS)
        if c_center:  # ATSS: centerness at the student's positives (one process: no GPU mean)
            center_kd = center_kd + ref_center_kd(rows(c_center[0], 1)[:, 0], rows(t[2], 1)[:, 0],
                                                  lab.reshape(-1), k_cls, avg_factor)
    assert avg_factor > 0  # the student has positives
    # conv.activate is mmcv's in-place ReLU: the kept features are the activated ones
    assert all((held >= 0).all() for _, out in s_out + t_out for held in out)
    torch.testing.assert_close(losses['loss_cls_kd'], cls_kd)
    torch.testing.assert_close(losses['loss_reg_kd'], reg_kd)
    if head == 'atss':
        assert center_kd > 0
        torch.testing.assert_close(losses['loss_center_kd'], center_kd)
    # the KD gradients reach the student's convs before k through the teacher's layers
    sum(v for n, v in losses.items() if n in model.distill_losses).backward()
    assert s_head.cls_convs[0].conv.weight.grad.abs().sum() > 0
    assert s_head.reg_convs[0].conv.weight.grad.abs().sum() > 0
    after_k = [p for conv in s_head.cls_convs[k:] for p in conv.parameters()]
    assert all(p.grad is None for p in after_k)  # the student's layers after k: GT losses only
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_crosskd_gfl_and_ld_are_the_official_arithmetic(ckpts):
    model = distiller(ckpts, 'gfl', CROSS_GFL)
    assert model.head_kd.index == 1  # default: the last stacked conv but one
    inputs, samples = synthetic_batch(shift=3.0)
    losses = model.loss(inputs, samples)
    student, teacher = model.student, model.teacher
    s_head, t_head = student.bbox_head, teacher.bbox_head
    with torch.no_grad():
        t_out = [ref_head_forward(t_head, x, 1, gfl_predict(sc))
                 for x, sc in zip(teacher.extract_feat(inputs), t_head.scales)]
    s_out = [ref_head_forward(s_head, x, 1, gfl_predict(sc))
             for x, sc in zip(student.extract_feat(inputs), s_head.scales)]
    crossed = [ref_reuse(t_head, 1, s[1], t[1], gfl_predict(sc))
               for s, t, sc in zip(s_out, t_out, t_head.scales)]
    gts, _, metas = unpack_gt_instances(samples)
    anchors, valid = s_head.get_anchors([o[0][0].shape[-2:] for o in s_out], metas, 'cpu')
    _, labels, label_weights, _, _, avg_factor = s_head.get_targets(anchors, valid, gts, metas)
    cls_kd, reg_levels, weight_sum, ld = 0, [], 0, 0
    for (c_cls, c_reg), (s, _), (t, _), lw, lab in zip(crossed, s_out, t_out, label_weights,
                                                        labels):
        t_cls, lw, lab = rows(t[0], 7), lw.reshape(-1), lab.reshape(-1)
        cls_kd = cls_kd + ref_kd_qfl(rows(c_cls, 7), t_cls, lw, avg_factor)
        w = t_cls.max(1)[0].sigmoid()
        w[lw == 0] = 0
        kl = ref_kl(rows(c_reg, 17), rows(t[1], 17), 1.0, 'sum')
        reg_levels.append(4.0 * (kl * w[:, None].expand(-1, 4).reshape(-1)).sum() / (4 + EPS))
        weight_sum = weight_sum + w.sum()
        # LD: the student's own predictions against the teacher's at the positives
        pos = lab < 7
        w_ld = rows(s[0], 7).detach().sigmoid().max(1)[0][pos]
        kl = ref_kl(rows(s[1], 68)[pos].reshape(-1, 17), rows(t[1], 68)[pos].reshape(-1, 17),
                    10.0, 'mean')
        ld = ld + 0.25 * (kl * w_ld[:, None].expand(-1, 4).reshape(-1)).sum() / (4 + EPS)
    assert sum(int(lab.lt(7).sum()) for lab in labels) > 0  # LD has positives to act on
    torch.testing.assert_close(losses['loss_cls_kd'], cls_kd)
    torch.testing.assert_close(losses['loss_reg_kd'], sum(x / weight_sum for x in reg_levels))
    torch.testing.assert_close(losses['loss_ld'], ld)


@pytest.mark.parametrize('pair, losses, overrides, message', [
    ('retina', CROSS_RETINA, dict(student=DEMO_STUDENT),
     r'CrossKD crosses a single-stage .* the student FasterRCNN is a two-stage detector '
     r"\(RoI head StandardRoIHead\).*source='roi_cls'"),
    ('retina', dict(loss_ld=dict(type='LDLoss', source='dense_reg')), {},
     r"distill_losses\['loss_ld'\] \(LDLoss\) distils box-distribution bins .* the student "
     r'RetinaHead has none. Use a GFLHead student'),
    ('retina', dict(loss_reg_kd=dict(type='CrossKDBinsLoss', source='cross_reg')), {},
     r'\(CrossKDBinsLoss\) distils box-distribution bins .* RetinaHead has none'),
    ('gfl', dict(loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg')), {},
     r'\(CrossKDBoxLoss\) compares decoded boxes.*GFLHead has distribution bins: use '
     'CrossKDBinsLoss'),
    ('retina', CROSS_RETINA, dict(reused_teacher_head_idx=3),
     r'reused_teacher_head_idx=3: expected an int in \[1, 2\]'),
    ('retina', dict(loss_kd=dict(type='LogitKDLoss', source='dense_cls')),
     dict(reused_teacher_head_idx=1),
     r"no loss reads a CrossKD source \['cross_cls', 'cross_reg', 'cross_centerness'\]"),
    ('gfl', CROSS_RETINA, dict(student=CONFIGS['retina'][0]),
     r'same head type, got student RetinaHead and teacher GFLHead'),
    ('gfl', dict(loss_ld=dict(type='LDLoss', source='dense_cls')), {},
     r"\(LDLoss\) reads regression rows: source 'dense_reg' or 'cross_reg', not 'dense_cls'"),
    ('retina', dict(loss_cls_kd=dict(type='CrossKDClsLoss', source='neck')), {},
     r"\(CrossKDClsLoss\) reads \['assignment'\] of a dense head: its source must be"),
    ('retina', CROSS_ATSS, {},
     r"source 'cross_centerness' distils the centerness .* the RetinaHead predicts none. "
     r'It works for ATSSHead and FCOSHead pairs'),
    ('gfl', dict(loss_center_kd=CROSS_ATSS['loss_center_kd']), {},
     r"source 'cross_centerness' .* the GFLHead predicts none.*for RetinaNet and GFL pairs "
     r"drop that loss"),
    ('gfl', dict(loss_center_kd=dict(type='CrossKDCenternessLoss', source='cross_cls')), {},
     r"CrossKDCenternessLoss.*cross_centerness"),
    ('retina', CROSS_RETINA, dict(teacher_class_map='by_name'),
     r"teacher_class_map='by_name' cannot be combined with the CrossKD sources "
     r"\['cross_cls', 'cross_reg'\]: .*teacher_class_map=None"),
])
def test_unfit_heads_are_refused_at_build(ckpts, pair, losses, overrides, message):
    with pytest.raises(ValueError, match=message):
        distiller(ckpts, pair, losses, **overrides)
