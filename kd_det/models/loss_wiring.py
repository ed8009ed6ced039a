"""Build the configured distillation losses and tell each one what it reads.

Each ``distill_losses`` entry is a registered loss plus the distiller's keys:
``source`` (see :mod:`.distill_sources`), ``levels`` (student levels, for level
sources), ``warmup_iters`` and ``stop_epoch`` (see :mod:`.loss_schedule`).
How a loss is called is what its class declares in ``receives``
(:mod:`kd_det.losses.receives`). Options that the models already determine
(a loss's ``strides``, ``finest_scale``, channels, ``activation``, ...) are
*derived*: the distiller sets those the class declares in ``receives.derived``,
and refuses a configured value that disagrees instead of keeping two copies
that can drift.
"""
import inspect
from typing import Dict, List, NamedTuple, Optional, Sequence

from mmdet.registry import MODELS
from torch import nn

from ..losses.receives import Receives, receives_of
from .distill_sources import FEATURE_SOURCES, ROI_SOURCES, SOURCES
from .loss_schedule import LossSchedule

# Entry keys the distiller consumes; the rest configure the loss itself.
DISTILLER_KEYS = ('source', 'levels', 'warmup_iters', 'stop_epoch')


class LossEntry(NamedTuple):
    """How the distiller runs one loss: its source, student levels (level sources),
    declared inputs and schedule."""
    source: str
    levels: Optional[List[int]]
    receives: Receives
    schedule: LossSchedule


def loss_sources(distill_losses: Dict[str, dict], default_source: str) -> Dict[str, str]:
    """``{log name: source}``, checking names, entries and sources."""
    if not isinstance(distill_losses, dict) or not distill_losses:
        raise ValueError('distill_losses must be a non-empty dict {log_name: loss_cfg}, '
                         f'got {distill_losses!r}')
    sources = {}
    for name, cfg in distill_losses.items():
        if not name.startswith('loss_'):
            raise ValueError(f"distill_losses key {name!r} must start with 'loss_' "
                             '(mmengine sums and logs the keys that do)')
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise ValueError(f'distill_losses[{name!r}] must be a dict with a `type`, got {cfg!r}')
        source = cfg.get('source', default_source)
        if source not in SOURCES:
            raise ValueError(f'distill_losses[{name!r}]: source={source!r} is not one of '
                             f'{list(SOURCES)}')
        sources[name] = source
    return sources


def loss_levels(distill_losses: Dict[str, dict], sources: Dict[str, str],
                paired_levels: Dict[str, Sequence[int]], num_levels: Dict[str, Optional[int]]
                ) -> Dict[str, Optional[List[int]]]:
    """``{log name: the student levels it reads}`` (None for RoI sources), checked.

    Args:
        paired_levels: per level source, the student levels that have a teacher
            partner (the default ``levels``).
        num_levels: per level source, the student's number of levels.
    """
    read = {}
    for name, cfg in distill_losses.items():
        source, levels = sources[name], cfg.get('levels')
        if source in ROI_SOURCES:
            if levels is not None:
                raise ValueError(f'distill_losses[{name!r}]: source {source!r} has no levels '
                                 f'(rows are RoIs); remove levels={levels!r}')
            read[name] = None
        else:
            read[name] = _check_levels(name, levels, paired_levels[source], num_levels[source])
    return read


def build_losses(distill_losses: Dict[str, dict], sources: Dict[str, str],
                 levels_read: Dict[str, Optional[List[int]]], derived: Dict[str, dict]):
    """``(nn.ModuleDict of losses, {log name: LossEntry})``.

    Args:
        levels_read: :func:`loss_levels`.
        derived: ``{source: {option: value}}`` read off the models; level
            sources may also derive per-level options through ``derived_per_level``.
    """
    modules, inputs = nn.ModuleDict(), {}
    for name, cfg in distill_losses.items():
        cfg = dict(cfg)
        source, levels = sources[name], levels_read[name]
        cfg.pop('source', None)
        cfg.pop('levels', None)
        schedule = LossSchedule.from_cfg(name, cfg.pop('warmup_iters', 0),
                                         cfg.pop('stop_epoch', None))
        weight = cfg.get('loss_weight', 1.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f'distill_losses[{name!r}]: loss_weight={weight!r}, expected '
                             'a number >= 0')
        facts = dict(derived.get(source, {}), source=source)
        if source in FEATURE_SOURCES:
            facts = {k: v(levels) if callable(v) else v for k, v in facts.items()}
            facts['num_levels'] = len(levels)
        module, receives = _build_loss(name, cfg, facts, source)
        modules[name] = module
        inputs[name] = LossEntry(source, levels, receives, schedule)
    return modules, inputs


def _check_levels(name: str, levels, paired: Sequence[int], num_levels: Optional[int]
                  ) -> List[int]:
    if levels is None:
        return list(paired)
    levels = list(levels)
    bad = [lvl for lvl in levels if not isinstance(lvl, int) or lvl < 0
           or (num_levels is not None and lvl >= num_levels)]
    if bad or not levels:
        raise ValueError(f'distill_losses[{name!r}]: levels {levels} invalid; expected '
                         f'a non-empty list of ints in [0, {num_levels})')
    unpaired = [lvl for lvl in levels if lvl not in paired]
    if unpaired:
        raise ValueError(f'distill_losses[{name!r}]: student level(s) {unpaired} have no '
                         f'teacher level of the same stride (paired student levels: '
                         f'{list(paired)}); drop them from `levels` or pair them with '
                         '`level_pairs`')
    return levels


def _build_loss(name: str, cfg: dict, facts: dict, source: str):
    """``(loss module, its Receives)``: ``cfg`` built with the derived options it declares;
    a ``source`` the loss does not declare it reads is refused."""
    loss_cls = MODELS.get(cfg['type'])
    if loss_cls is None:
        from .. import losses as kd_losses
        provided = sorted(n for n, obj in vars(kd_losses).items()
                          if isinstance(obj, type) and issubclass(obj, nn.Module))
        raise KeyError(f'distill_losses[{name!r}]: unknown type {cfg["type"]!r}; kd_det '
                       f'provides {provided}')
    receives = receives_of(loss_cls)
    if receives.sources is not None and source not in receives.sources:
        raise ValueError(
            f'distill_losses[{name!r}]: {cfg["type"]} cannot read source={source!r}; it reads '
            f'{list(receives.sources)}: set source={receives.sources[0]!r}')
    for key in receives.derived:
        value = facts.get(key)
        if value is None:
            continue
        if key in cfg and not _same(cfg[key], value):
            raise ValueError(
                f'distill_losses[{name!r}]: {key}={cfg[key]!r} disagrees with the models, '
                f'which give {key}={value!r}; leave {key} out and the distiller sets it')
        cfg[key] = value
    try:
        return MODELS.build(cfg), receives
    except TypeError as err:
        unknown = sorted(set(cfg) - {'type'} - set(_options(loss_cls)))
        if not unknown:
            raise
        raise KeyError(f'distill_losses[{name!r}]: {cfg["type"]} has no option(s) {unknown}; '
                       f'valid: {_options(loss_cls) + list(DISTILLER_KEYS)}') from err


def _options(loss_cls: type) -> List[str]:
    """The loss's own options, for the error that lists them (not used to wire inputs)."""
    return [p for p in inspect.signature(loss_cls.__init__).parameters
            if p not in ('self', 'args', 'kwargs')]


def _same(given, derived) -> bool:
    if isinstance(derived, (list, tuple)) and isinstance(given, (list, tuple)):
        return list(given) == list(derived)
    if isinstance(derived, (list, tuple)) and len(set(derived)) == 1:
        return given == derived[0]
    return given == derived
