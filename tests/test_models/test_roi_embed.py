"""The 'roi_embed' source: the embeddings the box heads classify, on the student's RoIs."""
import copy

import pytest
import torch

from kd_det.losses.gt_boxes import roi_labels
from kd_det.models.distill_sources import StudentTaps
from testing_utils import DEMO_STUDENT, synthetic_batch
from test_distill_sources import RETINA_STUDENT, ckpts, distiller  # noqa: F401

RRD = dict(type='RRDLoss', source='roi_embed', queue_size=64, num_negatives=3)


def _classifier_input(bbox_head, roi_feats):
    """Shared2FCBBoxHead written out: flatten, shared FCs with ReLU: what fc_cls reads."""
    x = roi_feats.flatten(1)
    for fc in bbox_head.shared_fcs:
        x = torch.relu(fc(x))
    return x


def test_embeddings_are_both_heads_classifier_inputs_on_the_students_rois(ckpts):  # noqa: F811
    model = distiller(ckpts, dict(loss_rrd=RRD))
    rrd = model.distill_losses['loss_rrd']
    assert (rrd.in_channels, rrd.teacher_channels) == (256, 256)  # derived from fc_cls
    inputs, samples = synthetic_batch(shift=1.0)  # img_id 0 and 1
    before = copy.deepcopy(rrd)
    seen = StudentTaps(model.student, {'roi_embed'})
    with seen:
        losses = model.loss(inputs, samples)
    rois, s_embed = seen.get('rois'), seen.get('roi_embed')
    with torch.no_grad():  # independent reference: the modules called directly
        s_feats = model.student.extract_feat(inputs)
        s_head = model.student.roi_head
        expected_s = _classifier_input(s_head.bbox_head,
                                       s_head.bbox_roi_extractor(s_feats[:4], rois))
        t_feats = model.teacher.extract_feat(inputs)
        t_head = model.teacher.roi_head
        expected_t = _classifier_input(t_head.bbox_head,
                                       t_head.bbox_roi_extractor(t_feats[:4], rois))
    torch.testing.assert_close(s_embed, expected_s)
    torch.testing.assert_close(model.teacher_outputs(inputs, rois)['roi'][2], expected_t)
    # the distiller's value is RRDLoss on those rows, RoIs and samples
    torch.testing.assert_close(losses['loss_rrd'],
                               before(expected_s, expected_t, samples, rois))


def test_rrd_keeps_the_positives_and_a_few_negatives_per_image():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    samples = []
    for i in range(2):
        sample = DetDataSample(metainfo=dict(img_id=i))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[0., 0., 10., 10.]]),
                                           labels=torch.tensor([3 + i]))
        samples.append(sample)
    rois = torch.tensor([[0, 0., 0., 10., 10.], [0, 50., 50., 60., 60.], [0, 1., 0., 10., 10.],
                         [0, 40., 40., 50., 50.], [0, 30., 30., 40., 40.],
                         [1, 60., 60., 70., 70.], [1, 0., 0., 9., 10.]])
    assert roi_labels(rois, samples, 0.5).tolist() == [3, -1, 3, -1, -1, -1, 4]
    from kd_det.losses import RRDLoss
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_negatives=1)
    assert loss._kept_rows(rois, samples).tolist() == [0, 1, 2, 5, 6]
    loss = RRDLoss(in_channels=4, teacher_channels=4, num_negatives=None)
    assert loss._kept_rows(rois, samples).tolist() == list(range(7))


def test_roi_embed_refuses_students_without_a_shared_fc_embedding(ckpts, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="source 'roi_embed' needs a two-stage student"):
        distiller(ckpts, dict(loss_rrd=RRD), student=RETINA_STUDENT)
    heads = dict(
        ConvFCBBoxHead="dict(type='ConvFCBBoxHead', num_shared_fcs=0, num_cls_fcs=1, "
                       "num_reg_fcs=1)",
        BBoxHead="dict(_delete_=True, type='BBoxHead', with_avg_pool=True, roi_feat_size=7, "
                 "in_channels=64, num_classes=7, bbox_coder=dict(type='DeltaXYWHBBoxCoder', "
                 "target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2]))")
    for name, head in heads.items():
        path = tmp_path / f'{name}.py'
        path.write_text(f'_base_ = {DEMO_STUDENT!r}\n'
                        f'model = dict(roi_head=dict(bbox_head={head}))\n')
        with pytest.raises(ValueError, match=f'the student box head {name} has none'):
            distiller(ckpts, dict(loss_rrd=RRD), student=str(path))


def test_distillation_key_colliding_with_a_student_loss_is_refused(ckpts):  # noqa: F811
    model = distiller(ckpts, dict(loss_cls=dict(type='LogitKDLoss', source='roi_cls')))
    inputs, samples = synthetic_batch(shift=1.0)
    with pytest.raises(ValueError, match=r"distill_losses \['loss_cls'\] would replace the "
                       r"student FasterRCNN's own loss.*'loss_kd_cls'"):
        model.loss(inputs, samples)
