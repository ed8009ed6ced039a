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
"""
import json
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from dist_testing import dist_train, hook_dir
from testing_utils import DEMO_PAIR, coco128_config, save_random_teacher, snapshot_hook
from kd_det.analysis.curves import load_scalars

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope='module')
def setup(tmp_path_factory, coco128):
    """A random-weight teacher checkpoint, the hook module and the distillation config."""
    root = tmp_path_factory.mktemp('dist')
    teacher_ckpt = save_random_teacher(str(root / 'teacher.pth'))
    cfg = coco128_config(str(root), 'distill_dist.py', DEMO_PAIR, distill=True,
                         extra=DISTILL.format(teacher_ckpt=teacher_ckpt))
    return dict(root=root, cfg=cfg, hook_dir=hook_dir(root))


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
