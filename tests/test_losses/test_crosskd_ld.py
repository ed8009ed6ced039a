"""CrossKD's and LD's losses against independent transcriptions of the official arithmetic.

References, written here from the official code's description, level by level as the
official code runs them (kd_det's losses get every level's rows at once):
- CrossKD: jbwang1997/CrossKD@87e156a46259e3a516b65fc6a049b200b9ab0d54,
  ``mmdet/models/losses/kd_loss.py`` (``kd_quality_focal_loss``,
  ``knowledge_distillation_kl_div_loss`` with ``class_reduction``) and
  ``mmdet/models/detectors/crosskd_{retinanet,gfl}.py`` (``pred_mimicking_loss_single``,
  ``loss_by_feat``: GIoU / avg_factor; bins / 4 per level, then / the summed weights);
  @ae7fba9bb029532dfbf1d15e140dd74a99c1829e ``crosskd_atss.py`` (the centerness term at the
  positives) and ``crosskd_fcos.py`` (IoU on the boxes).
- LD: mmdet 3.3.0, ``mmdet/models/dense_heads/ld_head.py`` (``LDHead.loss_by_feat_single``)
  and ``mmdet/models/losses/kd_loss.py``.
"""
import pytest
import torch

import kd_det.losses  # noqa: F401  (registers the losses)
from kd_det.losses import (CrossKDBinsLoss, CrossKDBoxLoss, CrossKDCenternessLoss,
                           CrossKDClsLoss, LDLoss)
from kd_det.models.assignment import Assignment
from official_crosskd_ld import EPS, ref_center_kd, ref_giou, ref_iou_log, ref_kd_qfl, ref_kl

LEVELS = (30, 12)  # rows per level


def split(t):
    return torch.split(t, LEVELS)


def assignment(rows, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes + 1, (rows,), generator=g)  # num_classes: bg
    weights = (torch.rand(rows, generator=g) > 0.2).float()
    return Assignment(labels, weights, float((labels < num_classes).sum()),
                      torch.zeros(rows, 4))


def boxes(rows, g):
    xy = torch.rand(rows, 2, generator=g) * 50
    return torch.cat([xy, xy + 1 + torch.rand(rows, 2, generator=g) * 30], 1)


def test_cls_kd_is_the_official_kd_quality_focal_loss_per_level():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(sum(LEVELS), 5, generator=g).requires_grad_()
    t = torch.randn(sum(LEVELS), 5, generator=g)
    a = assignment(sum(LEVELS))
    loss = CrossKDClsLoss(loss_weight=2.0)(s, t, assignment=a)
    # official: one call per level with that level's label weights, the same avg_factor
    expected = 2.0 * sum(ref_kd_qfl(sl, tl, wl, a.avg_factor)
                         for sl, tl, wl in zip(split(s), split(t), split(a.label_weights)))
    torch.testing.assert_close(loss, expected)
    s_ref = s.detach().clone().requires_grad_()
    ref_kd_qfl(s_ref, t, a.label_weights, a.avg_factor, beta=2.0).backward()
    CrossKDClsLoss(beta=2.0)(s, t, assignment=a).backward()
    torch.testing.assert_close(s.grad, s_ref.grad)


def test_box_kd_is_giou_weighted_by_the_teachers_score():
    g = torch.Generator().manual_seed(2)
    s, t = boxes(sum(LEVELS), g).requires_grad_(), boxes(sum(LEVELS), g)
    logits = torch.randn(sum(LEVELS), 5, generator=g)
    a = assignment(sum(LEVELS))
    loss = CrossKDBoxLoss()(s, t, teacher_logits=logits, assignment=a)
    expected = 0
    for sl, tl, zl, wl in zip(split(s), split(t), split(logits), split(a.label_weights)):
        w = zl.max(1)[0].sigmoid() * (wl != 0)
        expected = expected + (ref_giou(sl, tl) * w).sum() / (a.avg_factor + EPS)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_box_kd_takes_mmdets_iou_loss_as_crosskds_fcos_recipe():
    g = torch.Generator().manual_seed(5)
    s, t = boxes(sum(LEVELS), g).requires_grad_(), boxes(sum(LEVELS), g)
    logits = torch.randn(sum(LEVELS), 5, generator=g)
    a = assignment(sum(LEVELS))._replace(label_weights=torch.ones(sum(LEVELS)), avg_factor=3.7)
    loss = CrossKDBoxLoss(loss_weight=0.75, box_loss=dict(type='IoULoss'))(
        s, t, teacher_logits=logits, assignment=a)
    w = logits.max(1)[0].sigmoid()
    torch.testing.assert_close(loss, 0.75 * (ref_iou_log(s, t) * w).sum() / (3.7 + EPS))
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_centerness_kd_is_crosskds_atss_term_at_the_positives():
    g = torch.Generator().manual_seed(6)
    s = torch.randn(sum(LEVELS), 1, generator=g).requires_grad_()
    t = torch.randn(sum(LEVELS), 1, generator=g)
    a = assignment(sum(LEVELS))
    loss = CrossKDCenternessLoss(loss_weight=2.0, num_classes=5)(s, t, assignment=a)
    # official: one call per level at that level's positives, the same avg_factor
    expected = 2.0 * sum(ref_center_kd(sl[:, 0], tl[:, 0], ll, 5, a.avg_factor)
                         for sl, tl, ll in zip(split(s), split(t), split(a.labels)))
    assert expected > 0
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (s.grad[a.labels == 5] == 0).all() and (s.grad[a.labels < 5] != 0).all()
    none = a._replace(labels=torch.full_like(a.labels, 5))
    zero = CrossKDCenternessLoss(num_classes=5)(s, t, assignment=none)
    assert zero == 0 and zero.requires_grad  # in the graph: DDP sees every parameter


@pytest.mark.parametrize('T, reduce', [(1.0, 'sum'), (2.0, 'mean')])
def test_bins_kd_is_the_official_gfl_term(T, reduce):
    g = torch.Generator().manual_seed(3)
    bins = 17
    s = torch.randn(sum(LEVELS), 4 * bins, generator=g).requires_grad_()
    t = torch.randn(sum(LEVELS), 4 * bins, generator=g)
    logits = torch.randn(sum(LEVELS), 5, generator=g)
    a = assignment(sum(LEVELS))
    loss = CrossKDBinsLoss(T=T, bin_reduction=reduce, loss_weight=4.0)(
        s, t, teacher_logits=logits, assignment=a)
    per_level, weight_sum = [], 0
    for sl, tl, zl, wl in zip(split(s), split(t), split(logits), split(a.label_weights)):
        w = zl.max(1)[0].sigmoid()
        w[wl == 0] = 0
        kl = ref_kl(sl.reshape(-1, bins), tl.reshape(-1, bins), T, reduce)
        per_level.append(4.0 * (kl * w[:, None].expand(-1, 4).reshape(-1)).sum() / (4.0 + EPS))
        weight_sum = weight_sum + w.sum()
    expected = sum(x / weight_sum for x in per_level)
    torch.testing.assert_close(loss, expected)


def test_ld_is_mmdets_ldhead_term_at_the_students_positives():
    g = torch.Generator().manual_seed(4)
    bins, T = 17, 10.0
    s = torch.randn(sum(LEVELS), 4 * bins, generator=g).requires_grad_()
    t = torch.randn(sum(LEVELS), 4 * bins, generator=g)
    s_logits = torch.randn(sum(LEVELS), 5, generator=g).requires_grad_()
    a = assignment(sum(LEVELS))
    loss = LDLoss(num_classes=5)(s, t, assignment=a, student_logits=s_logits)
    expected = 0
    for sl, tl, zl, ll in zip(split(s), split(t), split(s_logits), split(a.labels)):
        pos = (ll >= 0) & (ll < 5)
        w = zl.detach().sigmoid().max(1)[0][pos]
        kl = ref_kl(sl[pos].reshape(-1, bins), tl[pos].reshape(-1, bins), T, 'mean')
        expected = expected + 0.25 * (kl * w[:, None].expand(-1, 4).reshape(-1)).sum() / (4 + EPS)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert s_logits.grad is None  # the weights are detached
    none = a._replace(labels=torch.full_like(a.labels, 5))
    assert LDLoss(num_classes=5)(s, t, assignment=none, student_logits=s_logits) == 0


def test_bad_options_and_shapes_are_refused():
    with pytest.raises(ValueError, match="bin_reduction='max'"):
        CrossKDBinsLoss(bin_reduction='max')
    with pytest.raises(ValueError, match='T=0.5'):
        LDLoss(T=0.5)
    with pytest.raises(ValueError, match='-1'):
        CrossKDClsLoss(loss_weight=-1)
    a = assignment(6)
    with pytest.raises(ValueError, match=r'\(6, 5\).*\(6, 4\)'):
        CrossKDClsLoss()(torch.randn(6, 5), torch.randn(6, 4), assignment=a)
    with pytest.raises(ValueError, match='num_classes is not set'):
        LDLoss()(torch.randn(6, 68), torch.randn(6, 68), assignment=a,
                 student_logits=torch.randn(6, 5))
    with pytest.raises(ValueError, match='num_classes is not set'):
        CrossKDCenternessLoss()(torch.randn(6, 1), torch.randn(6, 1), assignment=a)
    with pytest.raises(ValueError, match=r'\(R, 1\).*\(6, 2\), \(6, 2\) and \(6,\)'):
        CrossKDCenternessLoss(num_classes=5)(torch.randn(6, 2), torch.randn(6, 2), assignment=a)
    with pytest.raises(ValueError, match="loss_weight must be non-negative, got -1"):
        CrossKDCenternessLoss(loss_weight=-1)
