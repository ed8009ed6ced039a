"""Every shipped detector family under ``tools/dist_train.sh CFG 2`` (gloo, CPU): the demo
distillation configs on the synthetic shapes, full detection losses, each family's own
optimizer and hooks. mmengine's DDP wrapper with mmdet's default ``find_unused_parameters=False`` raises at the
second iteration when a trainable parameter got no gradient in the first, so two
iterations that finish, with the ranks' parameters equal, show that every parameter of the
distiller (student, connectors, loss heads) is in every step's graph. The Faster R-CNN run
adds a NaN RRD term on rank 0 only, with ``nonfinite='skip'``.
"""
import math
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from dist_testing import dist_train, hook_dir
from testing_utils import REPO, save_random_teacher, write_config
from kd_det.demo.synthetic_coco import generate_dataset

pytestmark = pytest.mark.slow

DEMO = osp.join(REPO, 'configs', 'demo')
DEMO_MODERN = osp.join(REPO, 'configs', 'demo_modern')
# Each family's demo distillation config on the generated shapes: 8 images, 2 per rank,
# so 2 iterations of one epoch; no validation; the family's own optimizer.
FAMILY_DATA = '''
custom_imports = dict(imports=['kd_det', 'kd_rank_dump'], allow_failed_imports=False)
data_root = {root!r} + '/'
train_dataloader = dict(batch_size=2, sampler=dict(shuffle=False),
                        dataset=dict(data_root=data_root))
train_cfg = dict(max_epochs=1, val_interval=1)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
'''
FAMILIES = {
    # Faster R-CNN: RRD on the box heads' embeddings (a loss with its own trainable head),
    # NaN on rank 0 in the first iteration, skipped there
    'faster_rcnn': dict(
        base=osp.join(DEMO, 'rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py'),
        teacher=osp.join(DEMO, 'faster-rcnn_r34-half_fpn_shapes.py'), extra='''
model = dict(teacher_ckpt={ckpt!r}, nonfinite='skip',
             distill_losses=dict(loss_rrd=dict(type='RankZeroNaNRRDLoss')))
custom_hooks = [dict(type='RankDumpHook')]
'''),
    # RetinaNet (P3-P7) taught by Faster R-CNN (P2-P6) through connectors: the student's
    # stride-128 level has no partner, so no connector may be built there
    'retinanet': dict(
        base=osp.join(DEMO, 'retinanet_r18-tiny_fpn_shapes.py'),
        teacher=osp.join(DEMO, 'faster-rcnn_r34-half_fpn_shapes.py'), extra='''
model = dict(
    _delete_=True, type='FeatureDistillDetector', student={{{{_base_.model}}}},
    teacher_config={teacher!r}, teacher_ckpt={ckpt!r},
    connectors=dict(in_channels=64, out_channels=64),
    distill_losses=dict(loss_pkd=dict(type='PKDLoss', loss_weight=6.0)))
custom_hooks = [dict(type='RankDumpHook')]
'''),
    # RTMDet: CWD through connectors + dense logit KD, with its EMA (distillation kept on
    # in this one-epoch run). mmdet's RTMDet turns its BN into SyncBN under DDP
    # (use_syncbn=True), which has no CPU kernel: off here, as on a CPU anyway.
    'rtmdet': dict(
        base=osp.join(DEMO_MODERN, 'cwd-kd_rtmdet_micro-to-nano_shapes.py'),
        teacher=osp.join(DEMO_MODERN, 'rtmdet_micro_shapes.py'), extra='''
model = dict(teacher_ckpt={ckpt!r}, student=dict(use_syncbn=False),
             distill_losses=dict(loss_cwd=dict(stop_epoch=None),
                                 loss_kd_cls=dict(stop_epoch=None)))
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='RankDumpHook')]
'''),
    # DINO: PKD on the ChannelMapper levels, 5-scale teacher -> 4-scale student
    'dino': dict(
        base=osp.join(DEMO_MODERN, 'pkd_dino-5scale-to-4scale_shapes.py'),
        teacher=osp.join(DEMO_MODERN, 'dino-5scale_r34-half_shapes.py'), extra='''
model = dict(teacher_ckpt={ckpt!r})
custom_hooks = [dict(type='RankDumpHook')]
'''),
}


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes') / 'data')
    return generate_dataset(root, num_train=8, num_val=1, num_tune=1, image_size=(128, 128),
                            seed=0)['root']


def family_config(directory, shapes, family) -> str:
    spec = FAMILIES[family]
    ckpt = save_random_teacher(osp.join(directory, 'teacher.pth'), spec['teacher'])
    return write_config(directory, f'{family}.py', f"_base_ = {spec['base']!r}\n"
                        + FAMILY_DATA.format(root=shapes)
                        + spec['extra'].format(ckpt=ckpt, teacher=spec['teacher']))


def trainable_equal_and_moved(run):
    """Both ranks hold bitwise-equal trainable parameters; returns those that moved."""
    (r0, r1), (s0, s1), init = run['records'], run['states'], run['init'][0]
    assert r0['trainable'] == r1['trainable'] and r0['trainable']
    differ = [k for k in r0['trainable'] if not torch.equal(s0[k], s1[k])]
    assert not differ, f'ranks disagree on {len(differ)} parameters, e.g. {differ[:5]}'
    # DDP broadcast rank 0's initial weights
    assert all(torch.equal(init[k], run['init'][1][k]) for k in r0['trainable'])
    return {k for k in r0['trainable'] if not torch.equal(s0[k], init[k])}


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_every_family_trains_under_ddp(family, shapes, tmp_path):
    """dist_train.sh, 2 ranks, find_unused_parameters=False, 2 iterations: both ranks finish,
    the distillation losses are finite, the ranks' parameters are equal, and the
    distiller's own parameters (connectors, loss heads) trained."""
    cfg = family_config(str(tmp_path), shapes, family)
    run = dist_train(cfg, str(tmp_path / 'work'), hook_dir(tmp_path))
    r0, r1 = run['records']
    for r in (r0, r1):
        assert r['world_size'] == 2 and r['wrapper'] == 'MMDistributedDataParallel'
        assert r['find_unused_parameters'] is False
        assert len(r['iters']) == 2
    ids = [[i for it in r['iters'] for i in it['img_ids']] for r in (r0, r1)]
    assert len(ids[0]) == len(ids[1]) == 4 and not set(ids[0]) & set(ids[1])
    distill = Config.fromfile(cfg, import_custom_modules=False).model.distill_losses
    for rank, r in enumerate((r0, r1)):
        for k, it in enumerate(r['iters']):
            for name in distill:
                value = it['losses'][name]
                if family == 'faster_rcnn' and rank == 0 and k == 0:
                    assert value == 0.0, (rank, k, name)  # the NaN term, skipped
                else:
                    assert math.isfinite(value), (rank, k, name, value)
    moved = trainable_equal_and_moved(run)
    own = [k for k in r0['trainable'] if k.startswith(('connectors.', 'distill_losses.'))]
    assert set(own) <= moved, sorted(set(own) - moved)
    student = [k for k in r0['trainable'] if k.startswith('student.')]
    assert len(moved & set(student)) > len(student) // 2
    if family == 'retinanet':
        # student levels 0-3 pair with teacher levels 1-4; level 4 has no connector
        assert {k.split('.')[1] for k in own} == {'0', '1', '2', '3'}
    if family == 'faster_rcnn':
        # rank 0 skipped its NaN term (and logged the count); rank 1 did not
        assert 'non-finite distillation loss: loss_rrd (roi_embed); dropped' in run['log']
        assert r0['iters'][0]['losses']['nonfinite_steps'] == 1.0
        assert r0['iters'][1]['losses']['nonfinite_steps'] == 1.0
        assert 'nonfinite_steps' not in r1['iters'][0]['losses']
        assert any(k.startswith('distill_losses.loss_rrd.student_head.') for k in own)
