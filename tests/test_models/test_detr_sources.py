"""DETR-family students and teachers (DINO): neck levels paired by stride, prediction
sources refused with the working alternative, and a DETR teacher for a Faster R-CNN."""
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS

from testing_utils import DEMO_STUDENT, REPO, save_random_teacher
from kd_det.losses.pkd import pkd_loss
from kd_det.models import load_config

DEMO = osp.join(REPO, 'configs', 'demo_modern')
DINO4 = osp.join(DEMO, 'dino-4scale_r18-tiny_shapes.py')
DINO5 = osp.join(DEMO, 'dino-5scale_r34-half_shapes.py')
RETINA = osp.join(REPO, 'configs', 'demo', 'retinanet_r18-tiny_fpn_shapes.py')


@pytest.fixture(scope='module')
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp('detr_teachers')
    return {cfg: save_random_teacher(str(root / f'{i}.pth'), cfg)
            for i, cfg in enumerate((DINO4, DINO5))}


def build(student_cfg, teacher_cfg, ckpt, losses, **kwargs):
    return MODELS.build(dict(type='FeatureDistillDetector',
                             student=load_config(student_cfg).model,
                             teacher_config=teacher_cfg, teacher_ckpt=ckpt,
                             distill_losses=losses, **kwargs))


@pytest.mark.parametrize('source', ['dense_cls', 'dense_reg', 'roi_cls', 'roi_reg', 'roi_embed'])
def test_detr_student_refuses_prediction_sources(teachers, source):
    loss = 'RRDLoss' if source == 'roi_embed' else 'LogitKDLoss'
    losses = dict(loss_kd=dict(type=loss, source=source))
    with pytest.raises(ValueError) as err:
        build(DINO4, DINO5, teachers[DINO5], losses)
    message = str(err.value)
    assert f"source {source!r}: the student DINO is a DETR-family detector" in message
    assert "source='neck'" in message and "source='backbone'" in message


def test_detr_teacher_refuses_dense_source_for_a_one_stage_student(teachers):
    losses = dict(loss_kd=dict(type='LogitKDLoss', source='dense_cls'))
    with pytest.raises(ValueError, match="the teacher DINO is a DETR-family detector"):
        build(RETINA, DINO4, teachers[DINO4], losses,
              connectors=dict(in_channels=64, out_channels=256))


def assert_pkd_is_the_reference_on_the_pairs(model, image_size, pairs):
    """The distiller's PKD on random images equals the sum over the expected level pairs
    of PKD on the two detectors' own extract_feat (connectors applied to the student)."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        student, teacher = model.student.extract_feat(images), model.teacher_outputs(images)
        got = model.distill_loss({'neck': list(student)}, teacher, [])['loss_pkd']
        s, t = list(student), model.teacher.extract_feat(images)
        if model.connectors is not None:
            s = [model.connectors[i](f) if i in pairs else f for i, f in enumerate(s)]
        expected = sum(6.0 * pkd_loss(s[i], t[j]) for i, j in pairs.items())
    torch.testing.assert_close(got, expected)


def test_dino_5scale_teacher_pairs_with_4scale_student_by_stride(teachers):
    model = build(DINO4, DINO5, teachers[DINO5],
                  dict(loss_pkd=dict(type='PKDLoss', loss_weight=6.0)))
    # the teacher's extra stride-4 level has no partner: student i <- teacher i + 1
    assert model.level_pairs['neck'] == {0: 1, 1: 2, 2: 3, 3: 4}
    assert model.level_strides['neck'] == ([8, 16, 32, 64], [4, 8, 16, 32, 64])
    assert_pkd_is_the_reference_on_the_pairs(model, (96, 128), {0: 1, 1: 2, 2: 3, 3: 4})


def test_dino_teacher_for_a_faster_rcnn_student(teachers):
    model = build(DEMO_STUDENT, DINO4, teachers[DINO4],
                  dict(loss_pkd=dict(type='PKDLoss', loss_weight=6.0, levels=[1, 2, 3, 4])),
                  connectors=dict(in_channels=64, out_channels=256))
    # student FPN strides 4-64, teacher ChannelMapper 8-64: student level 0 has no partner
    assert model.level_pairs['neck'] == {1: 0, 2: 1, 3: 2, 4: 3}
    assert_pkd_is_the_reference_on_the_pairs(model, (128, 128), {1: 0, 2: 1, 3: 2, 4: 3})


def test_building_the_distiller_leaves_a_dino_student_config_as_it_was(teachers):
    # mmdet's DINO edits its bbox_head config in place; the analysis tools (benchmark,
    # preflight) build the student alone from the same config after the distiller.
    cfg = dict(type='FeatureDistillDetector', student=load_config(DINO4).model,
               teacher_config=DINO5, teacher_ckpt=teachers[DINO5],
               distill_losses=dict(loss_pkd=dict(type='PKDLoss')))
    before = cfg['student'].to_dict()
    MODELS.build(cfg)
    assert cfg['student'].to_dict() == before
    assert type(MODELS.build(cfg['student'])).__name__ == 'DINO'
