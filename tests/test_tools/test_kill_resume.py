"""Kill a distillation run (SIGKILL) mid-epoch and ``--resume`` it; checkpoint-write safety.

The run: tools/train.py on 16 coco128 images, batch 2 (8 iterations per epoch, 1 epoch),
checkpoints every 2 iterations. A test-only hook (active only with KD_TEST_PAUSE_AT set)
holds the process after iteration 5, i.e. after ``iter_4.pth`` and mid-epoch, where it is
killed with SIGKILL: the kill point is deterministic however loaded the machine is.

What mmengine 0.10.7 guarantees about checkpoint writes (CheckpointHook and
``runner.checkpoint.save_checkpoint``), and what this file checks:

* ``iter_N.pth`` is written in place (``torch.save`` to memory, then ``open(path, 'wb')``
  and one ``write``): a crash mid-write leaves a truncated ``iter_N.pth``.
* ``last_checkpoint`` (what ``--resume`` without a path reads; mmengine never scans for the
  newest file) is rewritten only after that write returned. So a crash while writing
  ``iter_N.pth`` leaves ``last_checkpoint`` naming the previous, complete checkpoint, and
  ``--resume`` picks that one -- checked both with a real CheckpointHook whose write is
  interrupted halfway and with a truncated newer file beside a SIGKILLed run's checkpoints.
* NOT guaranteed: with ``max_keep_ckpts=1`` the hook deletes the previous checkpoint
  *before* writing the new one, so a crash mid-write leaves ``last_checkpoint`` naming a
  deleted file and no complete checkpoint (strict xfail below; ``max_keep_ckpts >= 2`` or
  -1, mmdet's default, is safe). ``last_checkpoint`` itself is rewritten in place (a crash
  in that tiny window leaves it empty) and nothing is fsync'ed (power loss is not covered).
* A truncated checkpoint named explicitly (``--resume PATH``) is refused with kd_det's
  CheckpointError naming the file.

Also pinned: mmengine's EpochBasedTrainLoop does not skip the batches of the interrupted
epoch that were already trained (IterBasedTrainLoop does): after resuming at iteration 4
it runs the whole epoch again, iterations 5..12 -- the iteration counter, learning rate,
schedule and optimizer state continue exactly, the data order restarts at the epoch start.
"""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from mmengine.config import Config
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner.checkpoint import save_checkpoint

from testing_utils import (DEMO_PAIR, REPO, coco128_config, needs_coco128, resumed_runner,
                           save_random_teacher)
from kd_det.checkpoint import CheckpointError, safe_load

PAUSE_HOOK = '''
import os
import os.path as osp
import time

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PauseForKillHook(Hook):
    """With KD_TEST_PAUSE_AT=N: after iteration N (logged and checkpointed as usual), write
    WORK_DIR/paused and wait to be killed."""
    priority = 'LOWEST'

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        at = int(os.environ.get('KD_TEST_PAUSE_AT', '0'))
        if at and runner.iter + 1 == at:
            with open(osp.join(runner.work_dir, 'paused'), 'w') as f:
                f.write(str(runner.iter + 1))
            time.sleep(300)
'''

DISTILL = '''
custom_imports = dict(imports=['kd_det', 'kd_pause_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='PauseForKillHook')]
model.update(teacher_ckpt={teacher_ckpt!r},
             distill_losses=dict(loss_ssim=dict(type='SSIMLoss', loss_weight=2.0)))
train_dataloader.update(batch_size=2)
train_dataloader['dataset']['indices'] = list(range(16))
default_hooks['checkpoint'] = dict(by_epoch=False, interval=2, max_keep_ckpts=3)
val_dataloader = None
val_cfg = None
val_evaluator = None
'''

PAUSE_AT = 5          # killed after iteration 5 of 8 ...
LAST_GOOD = 4         # ... so iter_4.pth is the last checkpoint
ITERS_PER_EPOCH = 8


def tool_env(hook_dir, **extra):
    return dict(os.environ, OMP_NUM_THREADS='1', **extra,
                PYTHONPATH=os.pathsep.join([hook_dir, os.environ.get('PYTHONPATH', '')]))


def run_scalars(work_dir):
    """The train scalars of each run in ``work_dir``, oldest run first."""
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            runs.append([e for e in map(json.loads, filter(str.strip, f)) if 'loss' in e])
    return runs


def truncate_copy(src, dst, fraction=0.5):
    with open(src, 'rb') as f:
        data = f.read()
    with open(dst, 'wb') as f:
        f.write(data[:int(len(data) * fraction)])


@pytest.fixture(scope='module')
def killed(tmp_path_factory):
    """A run SIGKILLed after iteration 5, plus a half-written iter_6.pth beside it (what a
    crash while saving the next checkpoint leaves: last_checkpoint is not updated)."""
    root = tmp_path_factory.mktemp('kill')
    teacher_ckpt = save_random_teacher(str(root / 'teacher.pth'))
    hook_dir = root / 'hooks'
    hook_dir.mkdir()
    (hook_dir / 'kd_pause_hook.py').write_text(PAUSE_HOOK)
    cfg = coco128_config(str(root), 'distill_kill.py', DEMO_PAIR, distill=True,
                         extra=DISTILL.format(teacher_ckpt=teacher_ckpt))
    work = str(root / 'work')
    os.makedirs(work)
    log_path = root / 'first_run.log'
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, 'tools/train.py', cfg, '--work-dir', work], cwd=REPO,
            env=tool_env(str(hook_dir), KD_TEST_PAUSE_AT=str(PAUSE_AT)),
            stdout=log, stderr=subprocess.STDOUT)
        try:
            while not osp.exists(osp.join(work, 'paused')):
                if proc.poll() is not None:
                    raise AssertionError(f'training exited {proc.returncode} before '
                                         f'iteration {PAUSE_AT}:\n{log_path.read_text()[-5000:]}')
                if time.time() - start > 150:
                    raise AssertionError(f'no iteration {PAUSE_AT} after 150 s:\n'
                                         f'{log_path.read_text()[-5000:]}')
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    print(f'first run killed after {time.time() - start:.1f} s')
    good = osp.join(work, f'iter_{LAST_GOOD}.pth')
    partial = osp.join(work, f'iter_{LAST_GOOD + 2}.pth')
    assert not osp.exists(partial)
    truncate_copy(good, partial)
    truncated = str(root / 'truncated.pth')  # for an explicit --resume PATH
    truncate_copy(good, truncated)
    return dict(root=root, cfg=cfg, work=work, hook_dir=str(hook_dir), teacher_ckpt=teacher_ckpt,
                good=good, partial=partial, truncated=truncated, log=log_path.read_text())


@needs_coco128
def test_killed_mid_epoch_after_a_checkpoint(killed):
    assert f'Epoch(train) [1][{PAUSE_AT}/{ITERS_PER_EPOCH}]' in killed['log']
    assert f'Epoch(train) [1][{PAUSE_AT + 1}/' not in killed['log']
    with open(osp.join(killed['work'], 'last_checkpoint')) as f:
        assert f.read().strip() == killed['good']
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(killed['work'], '*.pth'))) == \
        ['iter_2.pth', 'iter_4.pth', 'iter_6.pth']  # iter_6.pth: the half-written one
    with pytest.raises(CheckpointError, match='iter_6.pth'):
        safe_load(killed['partial'])


@pytest.fixture(scope='module')
def resumed_state(killed):
    """Runner state right after auto-resume (in this process), before any training."""
    sys.path.insert(0, killed['hook_dir'])
    try:
        cfg = Config.fromfile(killed['cfg'])
    finally:
        sys.path.remove(killed['hook_dir'])
    cfg.work_dir = killed['work']
    cfg.resume = True
    cfg.load_from = None
    return resumed_runner(cfg)


@needs_coco128
def test_resume_restores_iteration_lr_optimizer_and_schedule(killed, resumed_state):
    runner = resumed_state
    saved = torch.load(killed['good'])
    assert saved['meta']['iter'] == runner.iter == LAST_GOOD
    assert saved['meta']['epoch'] == runner.epoch == 0
    state = runner.model.state_dict()
    assert set(state) == set(saved['state_dict'])
    for key, value in saved['state_dict'].items():
        assert torch.equal(state[key], value), key

    optim = runner.optim_wrapper.state_dict()
    assert set(optim['state']) == set(saved['optimizer']['state']) and optim['state']
    for idx, param_state in saved['optimizer']['state'].items():
        assert set(optim['state'][idx]) == set(param_state)
        for name, value in param_state.items():
            assert torch.equal(torch.as_tensor(optim['state'][idx][name]),
                               torch.as_tensor(value)), (idx, name)
    for group, saved_group in zip(optim['param_groups'], saved['optimizer']['param_groups']):
        assert group == saved_group
    saved_lr = saved['optimizer']['param_groups'][0]['lr']
    assert runner.optim_wrapper.get_lr()['lr'][0] == saved_lr
    assert [s.state_dict() for s in runner.param_schedulers] == saved['param_schedulers']
    assert runner.param_schedulers[0].last_step == LAST_GOOD


@needs_coco128
def test_resume_reloads_teacher_from_teacher_ckpt(killed, resumed_state):
    saved = torch.load(killed['good'])
    assert not any(k.startswith('teacher') for k in saved['state_dict'])
    teacher_saved = torch.load(killed['teacher_ckpt'])['state_dict']
    teacher = resumed_state.model.teacher
    assert set(teacher.state_dict()) == set(teacher_saved)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_saved[key]), key
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.fixture(scope='module')
def resumed_run(killed, resumed_state):
    """tools/train.py --resume (auto) in the killed run's work dir, to the end."""
    start = time.time()
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', killed['cfg'], '--work-dir', killed['work'],
         '--resume'], cwd=REPO, env=tool_env(killed['hook_dir']), capture_output=True,
        text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    print(f'resumed run: {time.time() - start:.1f} s')
    return log


@needs_coco128
def test_auto_resume_uses_last_checkpoint_not_the_half_written_file(killed, resumed_run):
    assert f'Auto resumed from the latest checkpoint {killed["good"]}' in resumed_run
    assert f'resumed epoch: 0, iter: {LAST_GOOD}' in resumed_run


@needs_coco128
def test_resumed_run_continues_schedule_and_completes(killed, resumed_run):
    first, second = run_scalars(killed['work'])
    assert [e['iter'] for e in first] == list(range(1, PAUSE_AT + 1))
    # the iteration counter continues from the checkpoint: iteration 5 again, same LR
    assert second[0]['iter'] == LAST_GOOD + 1
    assert second[0]['lr'] == pytest.approx(first[LAST_GOOD]['lr'], rel=1e-9)
    # EpochBasedTrainLoop restarts the interrupted epoch from its first batch (see the
    # module docstring): 4 + 8 iterations in all
    final_iter = LAST_GOOD + ITERS_PER_EPOCH
    assert [e['iter'] for e in second] == list(range(LAST_GOOD + 1, final_iter + 1))
    assert 'Epoch(train) [1][1/8]' in resumed_run and 'Epoch(train) [1][8/8]' in resumed_run
    with open(osp.join(killed['work'], 'last_checkpoint')) as f:
        last = f.read().strip()
    assert last == osp.join(killed['work'], f'iter_{final_iter}.pth')
    ckpt = safe_load(last)
    # saved by after_train_iter, inside the (only) epoch: meta epoch is still 0
    assert ckpt['meta']['iter'] == final_iter and ckpt['meta']['epoch'] == 0
    # max_keep_ckpts=3 over both runs (the kept ids resume with the message hub); the
    # half-written iter_6.pth was overwritten at iteration 6, then rotated out
    kept = sorted(glob.glob(osp.join(killed['work'], 'iter_*.pth')), key=osp.getmtime)
    assert [osp.basename(p) for p in kept] == ['iter_8.pth', 'iter_10.pth', 'iter_12.pth']
    assert [safe_load(p)['meta']['iter'] for p in kept] == [8, 10, 12]


@needs_coco128
def test_resume_from_explicit_truncated_checkpoint_names_the_file(killed, tmp_path):
    bad = killed['truncated']
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', killed['cfg'], '--work-dir', str(tmp_path / 'w'),
         '--resume', bad], cwd=REPO, env=tool_env(killed['hook_dir']), capture_output=True,
        text=True, timeout=180)
    assert proc.returncode != 0
    assert 'kd_det.checkpoint.CheckpointError' in proc.stderr, proc.stderr[-3000:]
    assert f"{bad!r} is not a readable PyTorch checkpoint" in proc.stderr


# ------------------------------------------------- a crash while a checkpoint is written
class Crash(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch it)."""


def fake_runner(work_dir, name):
    """What CheckpointHook uses of a Runner; save_checkpoint is mmengine's real writer."""
    runner = types.SimpleNamespace(
        work_dir=str(work_dir), epoch=0, iter=0, max_iters=100,
        logger=MMLogger.get_current_instance(), message_hub=MessageHub.get_instance(name))

    def save(out_dir, filename, file_client_args=None, meta=None, **kwargs):
        save_checkpoint({'meta': meta, 'state_dict': {'w': torch.full((64, 1024), runner.iter)}},
                        osp.join(out_dir, filename))
    runner.save_checkpoint = save
    return runner


def interrupted_put(self, obj, filepath):
    """LocalBackend.put that dies after writing half of the checkpoint."""
    with open(filepath, 'wb') as f:
        f.write(obj[:len(obj) // 2])
    raise Crash(filepath)


@pytest.mark.parametrize('max_keep_ckpts', [
    3, -1,
    pytest.param(1, marks=pytest.mark.xfail(
        strict=True, raises=(AssertionError, FileNotFoundError),
        reason='mmengine 0.10.7 CheckpointHook deletes the previous checkpoint before '
               'writing the next one: with max_keep_ckpts=1 a crash mid-write leaves '
               'last_checkpoint naming a deleted file'))])
def test_crash_while_writing_a_checkpoint_keeps_last_checkpoint_valid(
        tmp_path, monkeypatch, max_keep_ckpts):
    runner = fake_runner(tmp_path, f'kd_det_crash_{max_keep_ckpts}_{tmp_path.name}')
    hook = CheckpointHook(interval=2, by_epoch=False, max_keep_ckpts=max_keep_ckpts)
    hook.before_train(runner)
    for it in range(4):  # iterations 1..4: iter_2.pth, iter_4.pth
        runner.iter = it
        hook.after_train_iter(runner, batch_idx=it)
    last_file = tmp_path / 'last_checkpoint'
    assert last_file.read_text() == str(tmp_path / 'iter_4.pth')

    monkeypatch.setattr(LocalBackend, 'put', interrupted_put)
    runner.iter = 5  # iteration 6 saves iter_6.pth, and dies halfway
    with pytest.raises(Crash):
        hook.after_train_iter(runner, batch_idx=5)
    monkeypatch.undo()

    with pytest.raises(CheckpointError, match='iter_6.pth'):
        safe_load(str(tmp_path / 'iter_6.pth'))
    named = last_file.read_text()
    assert named == str(tmp_path / 'iter_4.pth')
    assert safe_load(named)['meta']['iter'] == 4  # complete, and what --resume picks
