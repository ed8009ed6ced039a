"""The distiller's non-finite policy and its connectors: every parameter stays in the graph.

mmdet trains under DDP with ``find_unused_parameters=False``: a trainable parameter without
a gradient in a step stops the run. A skipped (NaN) term must therefore leave its loss's
parameters and the connectors with a gradient -- zero and finite -- and a connector no
loss reads must not exist. The 2-process runs are in tests/test_tools/test_distributed_families.py.
"""
import copy
import logging

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmdet.registry import MODELS

from testing_utils import DEMO_PAIR, DEMO_TEACHER, REPO, synthetic_batch
from kd_det.models.nonfinite import NonFinitePolicy

RRD = f'{REPO}/configs/demo/rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py'


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    teacher = MODELS.build(Config.fromfile(DEMO_TEACHER).model)
    path = str(tmp_path_factory.mktemp('teacher') / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict()}, path)
    return path


def distiller(teacher_ckpt, config=DEMO_PAIR, **overrides):
    cfg = copy.deepcopy(Config.fromfile(config).model)
    cfg.teacher_ckpt = teacher_ckpt
    if 'distill_losses' not in cfg:
        cfg.distill_losses = dict(loss_mse=dict(type='FeatureMSELoss'))
    cfg.update(overrides)
    return MODELS.build(cfg)


def nan_levels(level=3):
    """Neck levels of an MSE of 1 each, the teacher's ``level`` NaN at one pixel (none
    when ``level`` is None)."""
    feats = [torch.randn(1, 64, 4, 4) for _ in range(5)]
    teacher = [f + 1 for f in feats]
    if level is not None:
        teacher[level][0, 0, 0, 0] = float('nan')
    return feats, teacher


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings():
    handler = Warnings()
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


# --------------------------------------------------------------------------- skip
def test_a_skipped_term_leaves_zero_finite_gradients_on_its_loss_head(teacher_ckpt):
    """RRD (a loss with its own student head) made NaN, nonfinite='skip': the head gets a
    gradient, zero and finite; the student's own losses still train the student."""
    model = distiller(teacher_ckpt, RRD, nonfinite='skip')
    rrd = model.distill_losses['loss_rrd']
    forward = rrd.forward
    rrd.forward = lambda *args, **kwargs: forward(*args, **kwargs) * float('nan')
    model.train()
    inputs, samples = synthetic_batch(num=2, size=64, shift=8.0)
    losses = model.loss(inputs, samples)
    assert losses['loss_rrd'].item() == 0.0 and losses['nonfinite_steps'].item() == 1.0
    model.parse_losses(losses)[0].backward()  # as mmengine's train_step sums them
    head = [(n, p) for n, p in rrd.named_parameters() if p.requires_grad]
    assert [n for n, _ in head] == ['student_head.weight', 'student_head.bias']
    for name, p in head:
        assert p.grad is not None, name
        assert torch.equal(p.grad, torch.zeros_like(p)), name
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_skip_keeps_the_connectors_in_the_graph(teacher_ckpt):
    model = distiller(teacher_ckpt, nonfinite='skip',
                      connectors=dict(in_channels=64, out_channels=64))
    feats, teacher = nan_levels(3)
    losses = model.distill_loss(dict(neck=feats), dict(neck=teacher), [])
    losses['loss_mse'].backward()
    grads = {lvl: c.conv.weight.grad for lvl, c in enumerate(model.connectors)}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert torch.equal(grads[3], torch.zeros_like(grads[3]))  # its only term was skipped
    assert grads[0].abs().sum() > 0


# --------------------------------------------------------------------------- auto / AMP
def test_auto_is_error_without_autocast(teacher_ckpt):
    model = distiller(teacher_ckpt)
    assert model.nonfinite.mode == 'auto' and model.nonfinite.resolve('cpu') == 'error'
    feats, teacher = nan_levels(3)
    with pytest.raises(FloatingPointError, match=r'loss_mse \(level 3\).*nonfinite=.skip.'):
        model.distill_loss(dict(neck=feats), dict(neck=teacher), [])


def test_auto_under_autocast_leaves_the_step_to_the_loss_scaler(teacher_ckpt, warnings):
    """Under autocast (as mmengine's AmpOptimWrapper runs the forward) the term stays in the
    loss -- its gradients are not finite, so the scaler skips the step -- and the step is
    logged and counted."""
    model = distiller(teacher_ckpt, connectors=dict(in_channels=64, out_channels=64))
    feats, teacher = nan_levels(3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert model.nonfinite.resolve('cpu') == 'scaler'
        losses = model.distill_loss(dict(neck=feats), dict(neck=teacher), [])
    assert torch.isnan(losses['loss_mse'])
    losses['loss_mse'].backward()
    # every connector has a gradient (DDP is satisfied); the NaN one tells the scaler
    grads = [c.conv.weight.grad for c in model.connectors]
    assert all(g is not None for g in grads) and torch.isnan(grads[3]).any()
    assert model.nonfinite.log_vars()['nonfinite_steps'].item() == 1.0
    assert any('loss_mse (level 3); left in the loss: the AMP loss scaler skips this step'
               in m for m in warnings)


def test_explicit_error_is_kept_under_autocast(teacher_ckpt):
    model = distiller(teacher_ckpt, nonfinite='error')
    feats, teacher = nan_levels(1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with pytest.raises(FloatingPointError, match=r'loss_mse \(level 1\)'):
            model.distill_loss(dict(neck=feats), dict(neck=teacher), [])


@pytest.mark.parametrize('autocast', [False, True])
def test_consecutive_nonfinite_steps_stop_the_run_at_the_limit(autocast):
    """'skip' (and 'auto' under autocast): K - 1 consecutive non-finite steps pass, a finite
    step resets the count, the K-th consecutive one raises naming the loss and level."""
    policy = NonFinitePolicy('auto' if autocast else 'skip', limit=3)
    nan, one = torch.tensor(float('nan')), torch.tensor(1.)
    bad = [('loss_a', 'level 0', one), ('loss_b', 'level 2', nan)]
    good = [('loss_a', 'level 0', one), ('loss_b', 'level 2', one)]

    def step(terms):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            return policy.apply(terms, lambda name: torch.zeros(()))

    assert policy.log_vars() == {}
    for _ in range(2):
        values = step(bad)
        assert values[0] is one
        assert torch.isnan(values[1]) if autocast else values[1].item() == 0.0
    assert (policy.consecutive, policy.total) == (2, 2)
    assert step(good)[1] is one and policy.consecutive == 0
    step(bad)
    step(bad)
    with pytest.raises(FloatingPointError,
                       match=r'3 consecutive steps \(nonfinite_limit=3\).*loss_b \(level 2\)'):
        step(bad)
    assert policy.log_vars()['nonfinite_steps'].item() == 5.0


@pytest.mark.parametrize('overrides, match', [
    (dict(nonfinite='scaler'), r"nonfinite='scaler' is not one of \['auto', 'error', 'skip'\]"),
    (dict(nonfinite_limit=0), r'nonfinite_limit=0, expected an int >= 1'),
    (dict(nonfinite_limit=2.5), r'nonfinite_limit=2.5, expected an int >= 1'),
])
def test_bad_nonfinite_options_are_named(teacher_ckpt, overrides, match):
    with pytest.raises(ValueError, match=match):
        distiller(teacher_ckpt, **overrides)


# --------------------------------------------------------------------------- connectors
def test_connectors_are_built_on_the_levels_the_losses_read_only(teacher_ckpt):
    model = distiller(teacher_ckpt, connectors=dict(in_channels=64, out_channels=64),
                      distill_losses=dict(loss_mse=dict(type='FeatureMSELoss', levels=[0, 1]),
                                          loss_pkd=dict(type='PKDLoss', levels=[1, 3])))
    assert [c is not None for c in model.connectors] == [True, True, False, True, False]
    assert not any(k.startswith(('connectors.2.', 'connectors.4.'))
                   for k in model.state_dict())
    model.train()
    inputs, samples = synthetic_batch(num=2, size=64)
    losses = model.loss(inputs, samples)
    (losses['loss_mse'] + losses['loss_pkd']).backward()
    assert all(p.grad is not None for p in model.connectors.parameters())


def test_a_listed_connector_on_an_unread_level_is_refused(teacher_ckpt):
    conv = dict(in_channels=64, out_channels=64)
    with pytest.raises(ValueError, match=r'neck level\(s\) \[4\] have a connector but no '
                                         r'distillation loss reads them.*\[0, 1, 2, 3\]'):
        distiller(teacher_ckpt, connectors=[conv] * 5,
                  distill_losses=dict(loss_mse=dict(type='FeatureMSELoss',
                                                    levels=[0, 1, 2, 3])))
    with pytest.raises(ValueError, match=r'3 entries for the student.s 5 neck levels'):
        distiller(teacher_ckpt, connectors=[conv] * 3)
    model = distiller(teacher_ckpt, connectors=[conv] * 4 + [None],
                      distill_losses=dict(loss_mse=dict(type='FeatureMSELoss',
                                                        levels=[0, 1, 2, 3])))
    assert model.connectors[4] is None and model.connectors[3] is not None


@pytest.mark.skipif(not hasattr(torch.amp, 'GradScaler'),
                    reason="torch.amp.GradScaler('cpu') needs torch >= 2.3")
def test_under_amp_the_loss_scaler_skips_the_step(teacher_ckpt):
    """The AMP contract end to end on CPU: the NaN term left in the loss makes the loss
    scaler (the one mmengine's AmpOptimWrapper steps through) skip the optimizer step and
    halve its scale; the next, finite step trains."""
    model = distiller(teacher_ckpt, connectors=dict(in_channels=64, out_channels=64))
    optimizer = torch.optim.SGD(model.connectors.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.**16)
    weights = lambda: [p.detach().clone() for p in model.connectors.parameters()]  # noqa: E731

    def step(level):
        feats, teacher = nan_levels(level)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = model.distill_loss(dict(neck=feats), dict(neck=teacher), [])['loss_mse']
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    start = weights()
    step(2)
    assert all(torch.equal(a, b) for a, b in zip(start, weights()))  # skipped
    assert scaler.get_scale() == 2.**15 and model.nonfinite.consecutive == 1
    step(None)
    assert not all(torch.equal(a, b) for a, b in zip(start, weights()))  # trained
    assert model.nonfinite.consecutive == 0 and model.nonfinite.total == 1
