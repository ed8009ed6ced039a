"""The real distributed path on CPU: ``tools/dist_train.sh CFG 2`` (torch.distributed.run,
``--launcher pytorch``, gloo, mmengine's DDP wrapper) on a tiny distillation config on coco128.

What is checked, and why it is a real guarantee:

* **The two ranks hold identical student weights** after training (every key of the state
  dict, bitwise): DDP broadcasts rank 0's parameters at wrap time and all-reduces the
  gradients, and the gloo all-reduce hands both ranks the same sum. Buffers are included:
  the student's BatchNorms are frozen here (``norm_eval=True``); with BN in train mode
  mmengine's DDP (``broadcast_buffers=False``) lets each rank keep the running statistics
  of its own images, so buffers would legitimately differ (the checkpoint holds rank 0's).
* **2 ranks x 2 images == 1 process x 4 images** on the same global batches (DefaultSampler
  with ``shuffle=False`` gives rank r the indices r, r + 2, ..., so iteration k of the
  2-rank run sees the 4 images of iteration k of the 1-process run): the mean over ranks of
  ``loss_ssim`` equals the single-process value at every iteration, and the student weights
  after the run equal the single-process ones up to float rounding. This holds because
  every input to the gradient is a per-image mean over equally sized images:
  - SSIM is a mean over (N, C, H, W) with per-image, per-channel min-max normalisation,
    and all images are resized to exactly 128 x 128 (no batch-dependent padding);
  - BatchNorm is frozen (train-mode BN normalises with the batch's statistics, which
    differ between a batch of 2 and one of 4);
  - the detection losses are weighted 0: their random RoI/anchor sampling and their
    normalisation by the number of sampled boxes in the whole batch are not per-image;
  - SGD without momentum, weight decay, gradient clipping or LR schedule (the update is
    linear in the averaged gradient).
  RCKA is deliberately absent: its CKA is a statistic of the batch (a Gram matrix over the
  images), so under DDP it is computed over each rank's local batch and does not equal the
  large-batch value -- by design, not a bug.
* mmengine logs rank 0's losses only (``BaseModel.parse_losses`` does not all-reduce), so
  the logged ``loss_ssim`` is rank 0's local value, not the global-batch loss.

Then every shipped detector family the same way (the demo distillation configs on the
synthetic shapes, full detection losses, each family's own optimizer and hooks):
mmengine's DDP wrapper with mmdet's default ``find_unused_parameters=False`` raises at the
second iteration when a trainable parameter got no gradient in the first, so two
iterations that finish, with the ranks' parameters equal, show that every parameter of the
distiller (student, connectors, loss heads) is in every step's graph. The Faster R-CNN run
adds a NaN RRD term on rank 0 only, with ``nonfinite='skip'``.
"""
import json
import math
import os
import os.path as osp
import socket
import subprocess
import sys
import time

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from testing_utils import (DEMO_PAIR, REPO, coco128_config, save_random_teacher,
                           snapshot_hook, write_config)
from kd_det.analysis.curves import load_scalars
from kd_det.demo.synthetic_coco import generate_dataset

pytestmark = pytest.mark.slow

# A hook that each process of a run imports (custom_imports): after every iteration it keeps
# the process's own (unreduced) losses and image ids; after training it saves the process's
# student weights to WORK_DIR/rank{r}.pth and those records to WORK_DIR/rank{r}.json.
DUMP_HOOK = '''
import json
import math
import os.path as osp

import torch
from mmengine.dist import get_dist_info
from mmdet.registry import MODELS
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from kd_det.losses.rrd import RRDLoss


@HOOKS.register_module()
class RankDumpHook(Hook):
    priority = 'VERY_LOW'

    def before_train(self, runner):
        self.iters = []
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.init = {k: v.detach().clone() for k, v in model.named_parameters()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.iters.append(dict(
            losses={k: v.item() for k, v in outputs.items()},
            img_ids=[int(s.img_id) for s in data_batch['data_samples']]))

    def after_train(self, runner):
        rank, world_size = get_dist_info()
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'rank{rank}.pth'))
        torch.save(self.init, osp.join(runner.work_dir, f'rank{rank}_init.pth'))
        with open(osp.join(runner.work_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(dict(world_size=world_size, wrapper=type(runner.model).__name__,
                           find_unused_parameters=getattr(
                               runner.model, 'find_unused_parameters', None),
                           trainable=[k for k, p in model.named_parameters()
                                      if p.requires_grad],
                           iters=self.iters), f)


@MODELS.register_module()
class RankZeroNaNRRDLoss(RRDLoss):
    """kd_det's RRDLoss, NaN on rank 0 in the first iteration (after its memory update)."""

    def forward(self, *args, **kwargs):
        value = super().forward(*args, **kwargs)
        if get_dist_info()[0] == 0 and MessageHub.get_current_instance().get_info('iter') == 0:
            value = value * float('nan')
        return value
'''

DISTILL = '''
custom_imports = dict(imports=['kd_det', 'kd_rank_dump'], allow_failed_imports=False)
custom_hooks = [dict(type='RankDumpHook')]
model.update(teacher_ckpt={teacher_ckpt!r},
             distill_losses=dict(loss_ssim=dict(type='SSIMLoss', loss_weight=2.0)))
_zero = dict(loss_cls=dict(loss_weight=0.0), loss_bbox=dict(loss_weight=0.0))
model['student'].update(backbone=dict(norm_eval=True), rpn_head=_zero)
model['student']['roi_head']['bbox_head'].update(_zero)
train_dataloader['dataset']['pipeline'] = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=False),
    dict(type='PackDetInputs'),
]
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='SGD', lr=0.5, momentum=0.0, weight_decay=0.0))
param_scheduler = None
val_dataloader = None
val_cfg = None
val_evaluator = None
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def hook_dir(root) -> str:
    """A folder holding the hook module (``kd_rank_dump``) the ranks import."""
    folder = root / 'hooks'
    folder.mkdir(exist_ok=True)
    (folder / 'kd_rank_dump.py').write_text(DUMP_HOOK)
    return str(folder)


@pytest.fixture(scope='module')
def setup(tmp_path_factory, coco128):
    """A random-weight teacher checkpoint, the hook module and the distillation config."""
    root = tmp_path_factory.mktemp('dist')
    teacher_ckpt = save_random_teacher(str(root / 'teacher.pth'))
    cfg = coco128_config(str(root), 'distill_dist.py', DEMO_PAIR, distill=True,
                         extra=DISTILL.format(teacher_ckpt=teacher_ckpt))
    return dict(root=root, cfg=cfg, hook_dir=hook_dir(root))


def dist_train(cfg: str, work: str, hooks: str, *options: str) -> dict:
    """``bash tools/dist_train.sh CFG 2`` on CPU with gloo; each rank's records and weights."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([hooks, os.environ.get('PYTHONPATH', '')]))
    start = time.time()
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work,
         '--cfg-options', 'env_cfg.dist_cfg.backend=gloo', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f'dist_train.sh exited {proc.returncode}:\n{proc.stdout[-4000:]}\n'
                             f'{proc.stderr[-6000:]}')
    print(f'2-rank run: {time.time() - start:.1f} s')
    records = []
    for rank in range(2):
        with open(osp.join(work, f'rank{rank}.json')) as f:
            records.append(json.load(f))
    states = [torch.load(osp.join(work, f'rank{rank}.pth')) for rank in range(2)]
    init = [torch.load(osp.join(work, f'rank{rank}_init.pth')) for rank in range(2)]
    return dict(work=work, records=records, states=states, init=init,
                log=proc.stdout + proc.stderr)


@pytest.fixture(scope='module')
def two_ranks(setup):
    """tools/dist_train.sh CFG 2 on CPU with gloo: 2 ranks x 2 images, 2 iterations."""
    return dist_train(setup['cfg'], str(setup['root'] / 'work_2ranks'), setup['hook_dir'],
                      'train_dataloader.batch_size=2')


@pytest.fixture(scope='module')
def one_process(setup):
    """The same config in this process: 1 process x 4 images, 2 iterations."""
    sys.path.insert(0, setup['hook_dir'])
    try:
        cfg = Config.fromfile(setup['cfg'])
    finally:
        sys.path.remove(setup['hook_dir'])
    cfg.work_dir = str(setup['root'] / 'work_1proc')
    assert cfg.train_dataloader.batch_size == 4
    runner = Runner.from_cfg(cfg)
    snapshot = snapshot_hook()
    runner.register_hook(snapshot)
    runner.train()
    with open(osp.join(cfg.work_dir, 'rank0.json')) as f:
        record = json.load(f)
    return dict(record=record, state=torch.load(osp.join(cfg.work_dir, 'rank0.pth')),
                init=snapshot.state)


def test_both_ranks_ran_ddp_on_their_half_of_the_data(two_ranks):
    r0, r1 = two_ranks['records']
    assert r0['world_size'] == r1['world_size'] == 2
    assert r0['wrapper'] == r1['wrapper'] == 'MMDistributedDataParallel'
    assert len(r0['iters']) == len(r1['iters']) == 2
    ids0 = [i for it in r0['iters'] for i in it['img_ids']]
    ids1 = [i for it in r1['iters'] for i in it['img_ids']]
    assert len(ids0) == len(ids1) == 4 and not set(ids0) & set(ids1)


def test_both_ranks_hold_identical_student_weights(two_ranks):
    s0, s1 = two_ranks['states']
    assert set(s0) == set(s1) and any(k.startswith('student.backbone.') for k in s0)
    differ = [k for k in s0 if not torch.equal(s0[k], s1[k])]
    assert not differ, f'ranks disagree on {len(differ)} tensors, e.g. {differ[:5]}'
    # the checkpoint (written by rank 0) holds the same weights
    ckpt = torch.load(osp.join(two_ranks['work'], 'epoch_1.pth'))
    assert set(ckpt['state_dict']) == set(s0)
    assert all(torch.equal(ckpt['state_dict'][k], v) for k, v in s0.items())


def test_loss_matches_single_process_on_the_same_global_batch(two_ranks, one_process):
    ranks = [r['iters'] for r in two_ranks['records']]
    single = one_process['record']['iters']
    assert len(single) == 2
    for k, it in enumerate(single):
        # the same 4 images at iteration k
        assert sorted(ranks[0][k]['img_ids'] + ranks[1][k]['img_ids']) == sorted(it['img_ids'])
        # iteration 1: the same forward pass; iteration 2: after the same SGD update
        mean = (ranks[0][k]['losses']['loss_ssim'] + ranks[1][k]['losses']['loss_ssim']) / 2
        assert mean == pytest.approx(it['losses']['loss_ssim'], rel=1e-5, abs=1e-7), k
    # the step changed the loss (the comparison of iteration 2 is not vacuous)
    assert single[1]['losses']['loss_ssim'] != pytest.approx(single[0]['losses']['loss_ssim'],
                                                             rel=1e-6)


def test_logged_loss_is_rank_zeros_local_value(two_ranks):
    """mmengine does not all-reduce logged losses: the log shows rank 0's own batches
    (averaged over the LogProcessor's window, here iterations 1..k)."""
    logged = [e['loss_ssim'] for e in load_scalars(two_ranks['work'])['train']
              if 'loss_ssim' in e]
    r0, r1 = ([it['losses']['loss_ssim'] for it in r['iters']] for r in two_ranks['records'])
    assert len(logged) == 2
    for k, value in enumerate(logged):
        assert value == pytest.approx(sum(r0[:k + 1]) / (k + 1), rel=1e-5), k
    # rank 1's batches give other values: what the log shows is not the global-batch loss
    assert r0[0] != pytest.approx(r1[0], rel=1e-4)


def test_student_weights_match_single_process(two_ranks, one_process):
    dist_state, single, init = two_ranks['states'][0], one_process['state'], one_process['init']
    assert set(dist_state) == set(single)
    moved = 0.0
    for key, value in single.items():
        if not value.dtype.is_floating_point:
            assert torch.equal(dist_state[key], value), key
            continue
        # the same initial weights in both runs (seed 0, DDP broadcasts rank 0's)
        step = (value - init[key]).abs().max().item()
        moved = max(moved, step)
        torch.testing.assert_close(dist_state[key], value, rtol=1e-4, atol=1e-6,
                                   msg=f'{key}: moved {step:.3g} from its initial value')
    assert moved > 1e-3, 'the student barely trained: the weight comparison proves nothing'


# ------------------------------------------------------------- every family under DDP
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
