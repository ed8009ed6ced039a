"""Kill a distillation run (SIGKILL) while it saves a checkpoint and ``--resume`` it.

The run: tools/train.py on 16 coco128 images, batch 2 (8 iterations per epoch, 1 epoch), a
SafeCheckpointHook saving every 2 iterations and keeping one checkpoint (max_keep_ckpts=1:
with mmengine's own CheckpointHook a crash mid-save there leaves no complete checkpoint; see
tests/test_engine/test_safe_checkpoint_hook.py). A test-only module (active only with
KD_TEST_SLOW_SAVE set) makes the write of ``iter_6.pth`` stop halfway, where the process is
killed with SIGKILL: the kill point is deterministic however loaded the machine is.

What is checked:

* After the kill: ``iter_4.pth`` (complete) and the half-written temporary file of
  ``iter_6.pth``; no ``iter_6.pth``; ``last_checkpoint`` names ``iter_4.pth``.
* ``--resume`` (no path) skips a truncated newest checkpoint: the fixture then plants a
  truncated ``iter_6.pth`` and points ``last_checkpoint`` at it (what mmengine's in-place
  writes leave after a crash, or an un-fsync'ed file after a power loss); the run warns
  naming it, resumes from ``iter_4.pth``, removes the temporary file, completes, and every
  file it leaves loads with kd_det's safe loader.
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

import pytest
import torch
from mmengine.config import Config

from testing_utils import (DEMO_PAIR, REPO, coco128_config, needs_coco128, resumed_runner,
                           save_random_teacher)
from kd_det.checkpoint import CheckpointError, safe_load
from kd_det.engine import find_resumable_checkpoint
from kd_det.engine.safe_checkpoint_hook import TMP_SUFFIX

pytestmark = pytest.mark.slow
SLOW_SAVE = '''
"""With KD_TEST_SLOW_SAVE=NAME, a write to a file whose name starts with NAME writes half of
its data, creates `saving` beside the file and waits to be killed."""
import builtins
import os
import os.path as osp
import time

_open = builtins.open


class _HalfWrittenFile:
    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()

    def __getattr__(self, name):
        return getattr(self.file, name)

    def write(self, data):
        self.file.write(data[:len(data) // 2])
        self.file.flush()
        _open(osp.join(osp.dirname(self.file.name), 'saving'), 'w').close()
        time.sleep(300)


def _open_slowly(file, mode='r', *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    name = os.environ.get('KD_TEST_SLOW_SAVE')
    if name and 'w' in mode and osp.basename(str(file)).startswith(name):
        return _HalfWrittenFile(f)
    return f


builtins.open = _open_slowly
'''

DISTILL = '''
custom_imports = dict(imports=['kd_det', 'kd_slow_save'], allow_failed_imports=False)
custom_hooks = []
model.update(teacher_ckpt={teacher_ckpt!r},
             distill_losses=dict(loss_ssim=dict(type='SSIMLoss', loss_weight=2.0)))
train_dataloader.update(batch_size=2)
train_dataloader['dataset']['indices'] = list(range(16))
default_hooks['checkpoint'] = dict(type='SafeCheckpointHook', by_epoch=False, interval=2,
                                   max_keep_ckpts=1)
val_dataloader = None
val_cfg = None
val_evaluator = None
'''

SAVE_AT = 6           # killed while saving iter_6.pth ...
LAST_GOOD = 4         # ... so iter_4.pth is the last complete checkpoint
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


def checkpoint_files(work_dir):
    return sorted(name for name in os.listdir(work_dir) if '.pth' in name)


def truncate_copy(src, dst, fraction=0.5):
    with open(src, 'rb') as f:
        data = f.read()
    with open(dst, 'wb') as f:
        f.write(data[:int(len(data) * fraction)])


@pytest.fixture(scope='module')
def killed(tmp_path_factory):
    """A run SIGKILLed halfway through writing iter_6.pth; then a truncated iter_6.pth that
    last_checkpoint names is planted beside it (see the module docstring)."""
    root = tmp_path_factory.mktemp('kill')
    teacher_ckpt = save_random_teacher(str(root / 'teacher.pth'))
    hook_dir = root / 'hooks'
    hook_dir.mkdir()
    (hook_dir / 'kd_slow_save.py').write_text(SLOW_SAVE)
    cfg = coco128_config(str(root), 'distill_kill.py', DEMO_PAIR, distill=True,
                         extra=DISTILL.format(teacher_ckpt=teacher_ckpt))
    work = str(root / 'work')
    os.makedirs(work)
    log_path = root / 'first_run.log'
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, 'tools/train.py', cfg, '--work-dir', work], cwd=REPO,
            env=tool_env(str(hook_dir), KD_TEST_SLOW_SAVE=f'iter_{SAVE_AT}.pth'),
            stdout=log, stderr=subprocess.STDOUT)
        try:
            while not osp.exists(osp.join(work, 'saving')):
                if proc.poll() is not None:
                    raise AssertionError(f'training exited {proc.returncode} before saving '
                                         f'iter_{SAVE_AT}.pth:\n{log_path.read_text()[-5000:]}')
                if time.time() - start > 150:
                    raise AssertionError(f'no iter_{SAVE_AT}.pth after 150 s:\n'
                                         f'{log_path.read_text()[-5000:]}')
                time.sleep(0.2)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    print(f'first run killed after {time.time() - start:.1f} s')
    os.remove(osp.join(work, 'saving'))
    with open(osp.join(work, 'last_checkpoint')) as f:
        last_after_kill = f.read()
    files_after_kill = checkpoint_files(work)
    good = osp.join(work, f'iter_{LAST_GOOD}.pth')
    partial = osp.join(work, f'iter_{SAVE_AT}.pth')
    truncate_copy(good, partial)
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(partial)
    truncated = str(root / 'truncated.pth')  # for an explicit --resume PATH
    truncate_copy(good, truncated)
    return dict(root=root, cfg=cfg, work=work, hook_dir=str(hook_dir), teacher_ckpt=teacher_ckpt,
                good=good, partial=partial, truncated=truncated, log=log_path.read_text(),
                last_after_kill=last_after_kill, files_after_kill=files_after_kill)


@needs_coco128
def test_killed_while_saving_leaves_the_previous_checkpoint(killed):
    assert f'Epoch(train) [1][{SAVE_AT}/{ITERS_PER_EPOCH}]' in killed['log']
    assert f'Saving checkpoint at {SAVE_AT} iterations' in killed['log']
    assert f'Epoch(train) [1][{SAVE_AT + 1}/' not in killed['log']
    assert killed['last_after_kill'] == killed['good']
    # max_keep_ckpts=1: iter_2.pth went once iter_4.pth was in place; iter_6.pth never was
    assert killed['files_after_kill'] == [f'iter_{LAST_GOOD}.pth',
                                          f'iter_{SAVE_AT}.pth{TMP_SUFFIX}']
    assert safe_load(killed['good'])['meta']['iter'] == LAST_GOOD
    with pytest.raises(CheckpointError, match=f'iter_{SAVE_AT}.pth'):
        safe_load(killed['partial'])


@pytest.fixture(scope='module')
def resumed_state(killed):
    """Runner state right after auto-resume (in this process, as tools/train.py --resume
    configures it), before any training."""
    sys.path.insert(0, killed['hook_dir'])
    try:
        cfg = Config.fromfile(killed['cfg'])
    finally:
        sys.path.remove(killed['hook_dir'])
    cfg.work_dir = killed['work']
    cfg.resume = True
    cfg.load_from = find_resumable_checkpoint(killed['work'])
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
def test_auto_resume_skips_the_truncated_newest_checkpoint(killed, resumed_run):
    assert f'Auto resume: skipping {killed["partial"]}' in resumed_run
    assert f'resuming from {killed["good"]}, the newest checkpoint that loads' in resumed_run
    assert f'resumed epoch: 0, iter: {LAST_GOOD}' in resumed_run
    assert f'iter_{SAVE_AT}.pth{TMP_SUFFIX}: an unfinished save' in resumed_run


@needs_coco128
def test_resumed_run_continues_schedule_and_completes(killed, resumed_run):
    first, second = run_scalars(killed['work'])
    assert [e['iter'] for e in first] == list(range(1, SAVE_AT + 1))
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
    # max_keep_ckpts=1; the planted iter_6.pth was replaced at iteration 6, then rotated
    # out; the temporary file is gone: every file left loads
    assert checkpoint_files(killed['work']) == [f'iter_{final_iter}.pth']
    assert ckpt['message_hub']['runtime_info']['keep_ckpt_ids'] == [final_iter]


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
