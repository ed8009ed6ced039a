"""Per-loss schedule: linear warm-up over iterations, stop at an epoch, exact on resume."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MessageHub

from kd_det.models.loss_schedule import LossSchedule
from testing_utils import DEMO_PAIR, coco128_config, needs_coco128, synthetic_batch
from test_distill_sources import ckpts, distiller  # noqa: F401


def test_factor_rises_linearly_then_stops_at_the_epoch():
    schedule = LossSchedule(warmup_iters=4, stop_epoch=2)
    assert [schedule.factor(i, 0) for i in range(6)] == [0.25, 0.5, 0.75, 1., 1., 1.]
    assert schedule.factor(10, 1) == 1. and schedule.factor(10, 2) == 0.
    assert LossSchedule().factor(0, 99) == 1.
    assert schedule.factor(None, None) == 1.  # outside a training loop


@pytest.mark.parametrize('key, value, match', [
    ('warmup_iters', -3, 'warmup_iters=-3, expected an int >= 0'),
    ('warmup_iters', 2.5, 'warmup_iters=2.5'),
    ('stop_epoch', -1, r'stop_epoch=-1, expected None or an int >= 1'),
    ('stop_epoch', 0, 'stop_epoch=0'),
])
def test_bad_schedule_options_are_refused_naming_the_value(ckpts, key, value, match):  # noqa: F811
    loss = dict(type='FeatureMSELoss', **{key: value})
    with pytest.raises(ValueError, match=r"distill_losses\['loss_mse'\]: " + match):
        distiller(ckpts, dict(loss_mse=loss))


def _progress(**info):
    hub = MessageHub.get_current_instance()
    for key in ('iter', 'epoch', 'max_iters', 'max_epochs'):
        hub.update_info(key, info.get(key))


def test_distiller_scales_each_loss_by_its_own_factor(ckpts):  # noqa: F811
    model = distiller(ckpts, dict(
        loss_mse=dict(type='FeatureMSELoss', warmup_iters=4),
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', stop_epoch=1)))
    inputs, samples = synthetic_batch(shift=1.0)
    try:
        _progress()
        torch.manual_seed(0)
        full = model.loss(inputs, samples)
        _progress(iter=1, epoch=0, max_iters=10, max_epochs=2)
        torch.manual_seed(0)
        warm = model.loss(inputs, samples)
        torch.testing.assert_close(warm['loss_mse'], 0.5 * full['loss_mse'])
        torch.testing.assert_close(warm['loss_kd'], full['loss_kd'])
        _progress(iter=6, epoch=1, max_iters=10, max_epochs=2)
        torch.manual_seed(0)
        late = model.loss(inputs, samples)
        torch.testing.assert_close(late['loss_mse'], full['loss_mse'])
        assert late['loss_kd'].item() == 0  # off: not computed (no parameters to attach)
        with pytest.raises(ValueError, match=r"warmup_iters=4 is longer than training "
                                             r"\(max_iters=3\)"):
            _progress(iter=0, epoch=0, max_iters=3, max_epochs=1)
            model.loss(inputs, samples)
    finally:
        _progress()


def test_no_teacher_pass_once_every_loss_has_stopped(ckpts):  # noqa: F811
    model = distiller(ckpts, dict(loss_mse=dict(type='FeatureMSELoss', stop_epoch=1)),
                      connectors=dict(in_channels=64, out_channels=64))
    inputs, samples = synthetic_batch(shift=1.0)

    def no_teacher(*args, **kwargs):
        raise AssertionError('the teacher ran although every loss is off')
    model.teacher_outputs = no_teacher
    try:
        _progress(iter=5, epoch=1, max_iters=10, max_epochs=2)
        losses = model.loss(inputs, samples)
    finally:
        _progress()
    assert losses['loss_mse'].item() == 0
    losses['loss_mse'].backward()  # attached to the connectors: DDP sees every parameter
    assert all(p.grad is not None for p in model.connectors.parameters())


class _RecordFactors:
    """Wraps the distiller's ``distill_loss`` to record the factors each step used."""

    def __init__(self, model):
        self.factors, self.inner = [], model.distill_loss
        model.distill_loss = self

    def __call__(self, student, teacher, samples, factors=None):
        self.factors.append(dict(factors))
        return self.inner(student, teacher, samples, factors)


class _Killed(Exception):
    pass


class _KillAfterFirstEpoch(Hook):
    def after_train_epoch(self, runner):
        raise _Killed(f'killed after epoch {runner.epoch}')


@pytest.mark.slow
@needs_coco128
def test_resume_mid_warmup_continues_the_schedule_exactly(tmp_path):
    from mmengine.runner import Runner
    extra = ("model.update(distill_losses=dict(loss_mse=dict(type='FeatureMSELoss', "
             "warmup_iters=4)))\nval_dataloader = val_cfg = val_evaluator = None\n")
    config = coco128_config(str(tmp_path), 'warm.py', DEMO_PAIR, epochs=2, extra=extra,
                            distill=True)
    teacher = osp.join(str(tmp_path), 'teacher.pth')
    from testing_utils import save_random_teacher
    save_random_teacher(teacher)

    def runner_for(work_dir, epochs, resume=False):
        cfg = Config.fromfile(config)
        cfg.model.teacher_ckpt = teacher
        cfg.work_dir = str(tmp_path / work_dir)
        cfg.train_cfg.max_epochs = epochs
        cfg.custom_hooks = []
        if resume:
            cfg.resume = True
        return Runner.from_cfg(cfg)

    whole = runner_for('whole', 2)
    seen = _RecordFactors(whole.model)
    whole.train()
    assert [f['loss_mse'] for f in seen.factors] == [0.25, 0.5, 0.75, 1.0]

    killed = runner_for('split', 2)
    killed.register_hook(_KillAfterFirstEpoch(), priority='LOWEST')  # after the checkpoint
    with pytest.raises(_Killed):
        killed.train()
    resumed = runner_for('split', 2, resume=True)
    seen = _RecordFactors(resumed.model)
    resumed.train()
    assert [f['loss_mse'] for f in seen.factors] == [0.75, 1.0]


def test_a_stop_epoch_past_a_shortened_run_only_warns(ckpts, monkeypatch):  # noqa: F811
    import kd_det.models.loss_schedule as loss_schedule
    logged = []
    monkeypatch.setattr(loss_schedule, 'print_log', lambda msg, **kwargs: logged.append(msg))
    model = distiller(ckpts, dict(loss_mse=dict(type='FeatureMSELoss', stop_epoch=5)))
    inputs, samples = synthetic_batch(shift=1.0)
    try:
        _progress(iter=0, epoch=0, max_iters=4, max_epochs=2)
        losses = model.loss(inputs, samples)
        model.loss(inputs, samples)  # warned once per training length
    finally:
        _progress()
    assert losses['loss_mse'].item() > 0
    assert len(logged) == 1 and 'stop_epoch=5 is past the end of training (max_epochs=2)' \
        in logged[0]
