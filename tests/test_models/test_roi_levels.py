"""The 'roi_levels' source: the student's sampled RoIs pooled on every FPN level, both sides."""
import copy

import pytest
import torch
from mmcv.ops import roi_align

from kd_det.models.distill_sources import StudentTaps
from testing_utils import DEMO_STUDENT, synthetic_batch
from test_distill_sources import ckpts, distiller  # noqa: F401

UNIKD = dict(type='UniKDLoss', source='roi_levels')


def _pooled(feats, rois, strides):
    """Independent reference: mmcv's roi_align of every RoI on every level (7x7, sampling
    ratio 0, aligned), the settings of the demo heads' RoI extractor."""
    return [roi_align(f, rois, 7, 1. / s, 0, 'avg', True) for f, s in zip(feats, strides)]


def test_levels_are_every_rois_pooling_on_every_level_of_both_fpns(ckpts):  # noqa: F811
    model = distiller(ckpts, dict(loss_unikd=UNIKD))
    unikd = model.distill_losses['loss_unikd']
    # derived from the RoI extractors: the demo FPNs are 64-wide, the RoIs read P2-P5
    assert (unikd.source, unikd.in_channels, unikd.teacher_channels, unikd.num_levels) \
        == ('roi_levels', 64, 64, 4)
    inputs, samples = synthetic_batch(shift=1.0)
    before = copy.deepcopy(unikd)
    seen = StudentTaps(model.student, {'roi_levels'})
    with seen:
        losses = model.loss(inputs, samples)
    rois, s_levels = seen.get('rois'), seen.get('roi_levels')
    with torch.no_grad():
        s_feats = model.student.extract_feat(inputs)
        t_feats = model.teacher.extract_feat(inputs)
        t_head = model.teacher.roi_head
        t_cls = t_head.bbox_head(t_head.bbox_roi_extractor(t_feats[:4], rois))[0]
    strides = [4, 8, 16, 32]
    expected_s, expected_t = _pooled(s_feats, rois, strides), _pooled(t_feats, rois, strides)
    assert len(s_levels) == 4 and s_levels[0].shape == (rois.shape[0], 64, 7, 7)
    for got, want in zip(s_levels, expected_s):
        torch.testing.assert_close(got, want)
    out = model.teacher_outputs(inputs, rois)
    for got, want in zip(out['roi'][3], expected_t):
        torch.testing.assert_close(got, want)
    # the distiller's value is UniKDLoss on those levels and the teacher's logits
    torch.testing.assert_close(losses['loss_unikd'], before(expected_s, expected_t, t_cls))
    # the student's pooled levels keep their graph: the loss reaches the student's FPN
    losses['loss_unikd'].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in unikd.parameters())
    assert model.student.neck.fpn_convs[0].conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())


def test_roi_levels_refuses_what_cannot_give_it(ckpts, tmp_path):  # noqa: F811
    # (a single-stage student is refused for every RoI source: test_roi_embed.py)
    one_level = tmp_path / 'one_level.py'  # a RoI extractor on one level, as without an FPN
    one_level.write_text(
        f'_base_ = {DEMO_STUDENT!r}\n'
        'model = dict(roi_head=dict(bbox_roi_extractor=dict(featmap_strides=[16])))\n')
    with pytest.raises(ValueError, match=r"the student SingleRoIExtractor reads 1 level\(s\) "
                       r"\(featmap_strides \[16\]\).*Faster R-CNN R-50-FPN.*source='roi_embed'"):
        distiller(ckpts, dict(loss_unikd=UNIKD), student=str(one_level))
    with pytest.raises(ValueError, match=r"UniKDLoss reads source .* got source='roi_cls'"):
        distiller(ckpts, dict(loss_unikd=dict(type='UniKDLoss', source='roi_cls')))
