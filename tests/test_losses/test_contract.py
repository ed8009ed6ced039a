"""The contract every distillation loss keeps: registry names, weights, errors, float32 under
autocast, constant teacher, finite values and gradients on degenerate inputs."""
import pytest
import torch
from mmdet.registry import MODELS

import kd_det.losses  # noqa: F401  (registers the losses)

CONFIGS = [
    dict(type='FeatureMSELoss'),
    dict(type='PKDLoss'),
    dict(type='CWDLoss', tau=2.0),
    dict(type='SSIMLoss'),
    dict(type='SSIMLoss', padding='valid', normalize='level'),
    dict(type='RCKALoss', inter_weight=1.0),
    dict(type='RCKALoss', inter_weight=1.0, centered=True, with_l2_norm=True),
]
IDS = [' '.join(f'{k}={v}' for k, v in cfg.items()) for cfg in CONFIGS]


def build(cfg, **kwargs):
    return MODELS.build(dict(cfg, **kwargs))


def features(*shape):
    teacher = torch.randn(shape)
    return (teacher + torch.randn(shape)).requires_grad_(), teacher


@pytest.mark.parametrize('cfg', CONFIGS, ids=IDS)
def test_scalar_weighted_and_teacher_constant(cfg):
    """Doubling every weight of a loss doubles it (RCKA's inter term has its own weight,
    used as given)."""
    student, teacher = features(2, 3, 18, 20)
    teacher.requires_grad_()
    doubled = {k: 2.0 * cfg[k] for k in ('inter_weight', ) if cfg.get(k)}
    loss = build(cfg, loss_weight=2.0, **doubled)(student, teacher)
    assert loss.shape == () and loss.dtype == torch.float32
    torch.testing.assert_close(loss, 2.0 * build(cfg)(student, teacher))
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.parametrize('cfg', CONFIGS, ids=IDS)
def test_negative_weight_rejected(cfg):
    with pytest.raises(ValueError, match='-0.5'):
        build(cfg, loss_weight=-0.5)


@pytest.mark.parametrize('cfg', CONFIGS, ids=IDS)
@pytest.mark.parametrize('teacher_shape', [(2, 4, 8, 8), (2, 3, 8, 9)])
def test_mismatch_error_names_both_shapes(cfg, teacher_shape):
    with pytest.raises(ValueError, match=r'\(2, 3, 8, 8\).*' + str(teacher_shape).replace(
            '(', r'\(').replace(')', r'\)')):
        build(cfg)(torch.randn(2, 3, 8, 8), torch.randn(teacher_shape))


@pytest.mark.parametrize('cfg', CONFIGS, ids=IDS)
@pytest.mark.parametrize('input_dtype', [torch.float32, torch.bfloat16])
def test_float32_under_autocast(cfg, input_dtype):
    student, teacher = features(2, 3, 18, 20)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = build(cfg)(student.to(input_dtype), teacher.to(input_dtype))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    expected = build(cfg)(student.to(input_dtype).float(), teacher.to(input_dtype).float())
    torch.testing.assert_close(loss, expected)


def degenerate_inputs():
    constant = torch.ones(2, 3, 10, 12) * torch.tensor([0.0, 2.0, -1.0])[:, None, None]
    random = torch.randn(2, 3, 10, 12)
    return {
        'constant channels': (constant, random),
        'constant teacher': (random, constant),
        'both constant': (constant, constant + 1),
        'all zero': (torch.zeros(2, 3, 10, 12), torch.zeros(2, 3, 10, 12)),
        '1x1 level': (torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1)),
        'batch 1, 1x1': (torch.randn(1, 3, 1, 1), torch.randn(1, 3, 1, 1)),
        'batch 1, 3x2': (torch.randn(1, 3, 3, 2), torch.randn(1, 3, 3, 2)),
    }


@pytest.mark.parametrize('cfg', CONFIGS, ids=IDS)
@pytest.mark.parametrize('case', list(degenerate_inputs()))
def test_degenerate_inputs_finite(cfg, case):
    student, teacher = degenerate_inputs()[case]
    student = student.clone().requires_grad_()
    loss = build(cfg)(student, teacher)
    loss.backward()
    assert torch.isfinite(loss), loss
    assert torch.isfinite(student.grad).all()
