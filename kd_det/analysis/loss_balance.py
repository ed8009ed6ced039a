"""How hard each distillation loss pulls on the student's features, next to the detector's
own losses: gradient norms per loss and feature level over real training batches."""
from typing import Dict, Iterable, List, Optional

import torch
from torch import Tensor, nn

from ..models.distill_sources import StudentTaps

DETECTOR = 'detector'


def loss_gradient_norms(model: nn.Module, inputs: Tensor, samples: list,
                        ) -> Dict[str, object]:
    """One training batch through the distiller's own ``loss()``.

    Returns ``{'levels': {loss name or 'detector': [||d loss / d feature_l||, ...]},
    'inputs': {loss name or 'detector': ||d loss / d inputs||}, 'total': ||gradient of
    all parameters||, 'owners': {owner: ||gradient of its parameters||}}``, where the
    features are the student's ``feature_source`` levels (every source, RoI and dense
    logits included, reaches the student through them), the inputs its (preprocessed)
    images, 'detector' is the sum of the student's own losses, and an owner is a top-level
    module of the distiller ('student', 'connectors') or one loss ('distill_losses.NAME':
    the loss's own parameters, such as UniKD's predictors); the owners' squares sum to the
    total's.
    """
    source = model.feature_source
    model.zero_grad(set_to_none=True)
    inputs = inputs.detach().requires_grad_(True)
    with StudentTaps(model.student, {source}, model.taps) as taps:
        losses = model.loss(inputs, samples)
    feats = list(taps.get(source))
    # the detector's own total, summed as mmengine does (lists of per-level terms included)
    groups = {DETECTOR: model.parse_losses(
        {k: v for k, v in losses.items() if k not in model.distill_losses})[0]}
    groups.update({name: losses[name] for name in model.distill_losses})
    levels, on_inputs = {}, {}
    for name, value in groups.items():
        *grads, grad_in = torch.autograd.grad(value, [*feats, inputs], retain_graph=True,
                                              allow_unused=True)
        levels[name] = [0.0 if g is None else float(g.norm()) for g in grads]
        on_inputs[name] = 0.0 if grad_in is None else float(grad_in.norm())
    model.parse_losses(losses)[0].backward()
    squares: Dict[str, float] = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            parts = name.split('.')
            owner = '.'.join(parts[:2]) if parts[0] == 'distill_losses' else parts[0]
            squares[owner] = squares.get(owner, 0.0) + float(param.grad.norm()) ** 2
    total = sum(squares.values()) ** 0.5
    return dict(levels=levels, inputs=on_inputs, total=total,
                owners={owner: sq ** 0.5 for owner, sq in squares.items()})


def loss_balance(model: nn.Module, batches: Iterable, max_norm: Optional[float] = None
                 ) -> Dict[str, object]:
    """Mean gradient norms over ``batches`` of preprocessed ``(inputs, samples)``.

    Returns ``{'levels': {name: [mean norm per level]}, 'inputs': {name: mean norm on the
    inputs}, 'total': [norm per batch], 'owners': {owner: mean norm of its parameters'
    gradient}, 'clipped': batches whose total norm exceeds max_norm (None without
    clipping)}``.
    """
    model.train()
    sums: Dict[str, List[float]] = {}
    input_sums: Dict[str, float] = {}
    owner_sums: Dict[str, float] = {}
    totals = []
    for inputs, samples in batches:
        result = loss_gradient_norms(model, inputs, samples)
        for name, norms in result['levels'].items():
            sums[name] = [a + b for a, b in zip(sums.get(name, [0.0] * len(norms)), norms)]
            input_sums[name] = input_sums.get(name, 0.0) + result['inputs'][name]
        for owner, norm in result['owners'].items():
            owner_sums[owner] = owner_sums.get(owner, 0.0) + norm
        totals.append(result['total'])
    count = max(len(totals), 1)
    return dict(levels={k: [v / count for v in vs] for k, vs in sums.items()},
                inputs={k: v / count for k, v in input_sums.items()}, total=totals,
                owners={k: v / count for k, v in owner_sums.items()},
                clipped=None if max_norm is None else sum(t > max_norm for t in totals))


def balance_table(result: Dict[str, object], max_norm: Optional[float]) -> str:
    """A markdown table: per loss and level, its gradient norm, the detector's, the ratio."""
    levels = result['levels']
    detector = levels[DETECTOR]
    lines = ['| loss | level | grad norm | detector grad norm | ratio |',
             '|---|---:|---:|---:|---:|']
    for name, norms in levels.items():
        if name == DETECTOR:
            continue
        for lvl, (norm, det) in enumerate(zip(norms, detector)):
            ratio = f'{norm / det:.3g}' if det > 0 else 'n/a'
            lines.append(f'| {name} | {lvl} | {norm:.3g} | {det:.3g} | {ratio} |')
    totals = result['total']
    mean = sum(totals) / max(len(totals), 1)
    clip = (f'clip_grad max_norm {max_norm:g}: exceeded in {result["clipped"]} of '
            f'{len(totals)} batches' if max_norm is not None else 'no clip_grad in the config')
    lines.append(f'\ntotal gradient norm (all parameters, all losses): mean {mean:.3g}, '
                 f'max {max(totals, default=0):.3g}; {clip}')
    return '\n'.join(lines)
