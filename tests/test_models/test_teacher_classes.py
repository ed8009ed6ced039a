"""The teacher's classes against the dataset's: refused when they differ, mapped when the
config says how, a warning when the checkpoint records none."""
import copy
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config

from testing_utils import DEMO_PAIR, DEMO_TEACHER, synthetic_batch
from kd_det.engine import TeacherCheckHook
from kd_det.models.teacher_classes import TeacherClassMap

CLASSES = ('circle', 'ring', 'square', 'triangle', 'hexagon', 'star', 'cross')  # the demo's
# a teacher trained on a superset, in another order
SUPERSET = ('star', 'ellipse', 'cross', 'ring', 'circle', 'hexagon', 'arrow', 'triangle',
            'square')


def save_teacher(path, classes=CLASSES, num_classes=7, meta=True):
    cfg = Config.fromfile(DEMO_TEACHER).model
    cfg.roi_head.bbox_head.num_classes = num_classes
    torch.manual_seed(0)
    state = MODELS.build(cfg).state_dict()
    torch.save(dict(state_dict=state, meta=dict(dataset_meta=dict(classes=classes))
                    if meta else {}), path)
    return cfg


def distiller(teacher_ckpt, teacher_cfg=None, loss=None, **options):
    cfg = copy.deepcopy(Config.fromfile(DEMO_PAIR).model)
    cfg.update(teacher_ckpt=teacher_ckpt, distill_losses=dict(
        loss_kd=loss or dict(type='LogitKDLoss', source='roi_cls')), **options)
    if teacher_cfg is not None:
        cfg.teacher_config = teacher_cfg
    return MODELS.build(cfg)


def start_training(model, classes=CLASSES):
    """TeacherCheckHook.before_train on a runner whose training dataset has ``classes``."""
    loader = type('Loader', (list, ), dict(dataset=SimpleNamespace(
        metainfo=dict(classes=classes))))()  # no batches: the class check alone
    runner = SimpleNamespace(model=model, val_loop=None, val_dataloader=None,
                             train_dataloader=loader)
    TeacherCheckHook(num_batches=0).before_train(runner)


def test_reversed_classes_are_refused_before_training_naming_the_first_difference(tmp_path):
    save_teacher(tmp_path / 't.pth', CLASSES[::-1])
    model = distiller(str(tmp_path / 't.pth'))
    assert model.teacher.dataset_meta['classes'] == CLASSES[::-1]
    with pytest.raises(ValueError, match=r"first difference at index 0: teacher 'cross', "
                                         r"dataset 'circle'.*teacher_class_map"):
        start_training(model)
    swapped = CLASSES[:3] + (CLASSES[4], CLASSES[3]) + CLASSES[5:]
    with pytest.raises(ValueError, match=r"index 3: teacher 'triangle', dataset 'hexagon'"):
        TeacherClassMap(None, CLASSES, True, 7, 7).check(swapped)
    with pytest.raises(ValueError, match=r"index 7: only the dataset has a class there"):
        TeacherClassMap(None, CLASSES, False).check(CLASSES + ('arrow', ))


def test_the_same_classes_pass_and_change_nothing(tmp_path):
    save_teacher(tmp_path / 't.pth')
    model = distiller(str(tmp_path / 't.pth'))
    start_training(model)
    assert model.teacher_class_map.index is None
    inputs, samples = synthetic_batch(size=96)
    assert torch.isfinite(model.loss(inputs, samples)['loss_kd'])


def test_a_checkpoint_without_class_names_warns_once(tmp_path):
    save_teacher(tmp_path / 't.pth', meta=False)
    model = distiller(str(tmp_path / 't.pth'))
    assert model.teacher.dataset_meta is None
    inputs, samples = synthetic_batch(size=96)
    with mock.patch('kd_det.models.teacher_classes.print_log') as log:
        start_training(model)
        model.loss(inputs, samples)
        model.loss(inputs, samples)
    assert log.call_count == 1
    assert 'teacher checkpoint records no class names' in log.call_args[0][0]
    # a mapping by name cannot be resolved without names: refused, advice on indices
    with pytest.raises(ValueError, match=r'no class names.*teacher_class_map=\[\.\.\.\]'):
        TeacherClassMap('by_name', None, True, 7, 7).check(CLASSES)


def test_superset_teacher_by_name_maps_logits_and_deltas_to_the_dataset_order(tmp_path):
    teacher_cfg = save_teacher(tmp_path / 't.pth', SUPERSET, num_classes=len(SUPERSET))
    with pytest.raises(ValueError, match=r'num_classes: student 7, teacher 9.*teacher_class_map'):
        distiller(str(tmp_path / 't.pth'), teacher_cfg)
    model = distiller(str(tmp_path / 't.pth'), teacher_cfg, teacher_class_map='by_name')
    inputs, samples = synthetic_batch(size=96)
    with pytest.raises(RuntimeError, match='TeacherCheckHook'):  # the mapping is not known yet
        model.loss(inputs, samples)
    start_training(model)
    columns = [SUPERSET.index(name) for name in CLASSES]  # [4, 3, 8, 7, 5, 0, 2]
    assert model.teacher_class_map.index == columns
    rois = torch.tensor([[0., 4., 4., 40., 40.], [1., 10., 8., 60., 50.]])
    mapped = model.teacher_outputs(inputs, rois)['roi']
    with torch.no_grad():
        feats = model.teacher.neck(model.teacher.backbone(model.teacher_inputs(inputs)))
        raw = model.teacher.roi_head._bbox_forward(feats, rois)
    torch.testing.assert_close(mapped[0], raw['cls_score'][:, columns + [9]])
    deltas = raw['bbox_pred'].view(2, 9, 4)[:, columns].reshape(2, 28)
    torch.testing.assert_close(mapped[1], deltas)
    losses = model.loss(inputs, samples)
    assert torch.isfinite(losses['loss_kd'])
    # renamed classes by a dict, the rest by name; unknown names are refused
    renamed = TeacherClassMap({'circle': 'ellipse'}, SUPERSET, True, 9, 7)
    renamed.check(CLASSES)
    assert renamed.index == [1] + columns[1:]
    with pytest.raises(ValueError, match=r"no teacher class named \['disc'\]"):
        TeacherClassMap({'circle': 'disc'}, SUPERSET, True, 9, 7).check(CLASSES)


def test_index_lists_dense_maps_and_refusals():
    class_map = TeacherClassMap([2, 0], None, True, 3, 2, priors=2)
    class_map.check(None)  # indices need no names
    maps = torch.arange(2 * 3, dtype=torch.float).view(1, 2 * 3, 1, 1)  # 2 priors x 3 classes
    dense = class_map.remap({'dense': ([maps, maps * 2], ['deltas'])})['dense']
    # prior a, class k at channel a * 3 + k (mmdet's layout): prior 0 -> [2, 0], prior 1 -> [5, 3]
    assert dense[0][0].flatten().tolist() == [2., 0., 5., 3.] and dense[1] == ['deltas']
    softmax = TeacherClassMap([2, 0], None, True, 3, 2)
    softmax.check(None)  # 3 classes + background: the background channel stays last
    out = softmax.remap({'dense': ([torch.arange(4.).view(1, 4, 1, 1)], )})['dense'][0][0]
    assert out.flatten().tolist() == [2., 0., 3.]
    with pytest.raises(ValueError, match=r'one teacher class index in \[0, 3\) per student'):
        TeacherClassMap([0, 3], None, True, 3, 2)
    with pytest.raises(ValueError, match="'ignore' is for feature distillation only"):
        TeacherClassMap('ignore', None, True, 3, 2)
    with pytest.raises(ValueError, match="teacher_class_map='name' is not one of"):
        TeacherClassMap('name', None, True, 3, 2)
    ignored = TeacherClassMap('ignore', CLASSES[::-1], False)
    ignored.check(CLASSES)  # features only: unrelated classes stated explicitly


def test_preflight_fails_on_other_classes_and_warns_without_names(tmp_path):
    from mmengine.registry import init_default_scope

    from kd_det.analysis.preflight import check_teacher_classes
    init_default_scope('mmdet')
    cfg = Config.fromfile(DEMO_PAIR)  # its dataset is built without its files
    save_teacher(tmp_path / 't.pth', CLASSES[::-1])
    (line, ) = check_teacher_classes(distiller(str(tmp_path / 't.pth')), cfg)
    assert line.status == 'FAIL' and "index 0: teacher 'cross', dataset 'circle'" in line.result
    assert 'teacher_class_map' in line.advice
    save_teacher(tmp_path / 'n.pth', meta=False)
    (line, ) = check_teacher_classes(distiller(str(tmp_path / 'n.pth')), cfg)
    assert line.status == 'WARN' and 'records no class names' in line.result
