"""Teacher-side connectors: a parameter-free normalisation of the teacher's levels.

``teacher_connectors=dict(norm_cfg=dict(type='BN', affine=False, track_running_stats=False))``
on the distiller normalises every teacher level of its ``feature_source`` before any
loss reads it: MMYOLO's ``NormConnector`` in its RTMDet distillation (BN over the
batch's statistics, no affine: each channel to zero mean, unit variance). A list gives
one dict or ``None`` per teacher level. ``in_channels`` is optional: the teacher's
width where the model says it (the tapped module's channels, the neck's
``out_channels``); a configured value that differs is refused, naming both.

The teacher side runs without gradients, so a teacher connector has no trainable
parameters (``affine=False``); one with them is refused (they would never train).
"""
from typing import Dict, List, Optional, Sequence

from mmcv.cnn import build_norm_layer
from torch import Tensor, nn

from .distill_sources import feature_channels


class TeacherConnectors(nn.Module):
    """One norm layer (or None) per teacher level of ``source``, each checking its width."""

    def __init__(self, norms: Sequence[Optional[nn.Module]], widths: Sequence[Optional[int]],
                 source: str) -> None:
        super().__init__()
        self.norms = nn.ModuleList(norms)
        self.widths = list(widths)
        self.source = source

    def forward(self, levels: Sequence[Tensor]) -> List[Tensor]:
        """``levels``: the teacher's (N, C, H, W) levels; each normalised by its connector."""
        if len(levels) != len(self.norms):
            raise ValueError(f'teacher_connectors: {len(self.norms)} connectors for '
                             f'{len(levels)} teacher {self.source} levels')
        out = []
        for lvl, (feat, norm, width) in enumerate(zip(levels, self.norms, self.widths)):
            if norm is not None and feat.shape[1] != width:
                raise ValueError(_width_error(lvl, self.source, width, feat.shape[1]))
            out.append(feat if norm is None else norm(feat))
        return out


def build_teacher_connectors(cfg, source: str, teacher_cfg: dict,
                             level_strides: Dict[str, tuple], taps=None
                             ) -> Optional[TeacherConnectors]:
    """The ``teacher_connectors`` option built for the teacher's ``source`` levels.

    Args:
        cfg: None, one dict ``dict(norm_cfg, in_channels=None)`` for every teacher
            level, or a list with one dict or None per teacher level.
        source: the distiller's ``feature_source``.
        teacher_cfg: the teacher's model config (its neck's ``out_channels``).
        level_strides: the distiller's ``{kind: (student strides, teacher strides)}``
            of the level kinds that losses read.
        taps: the distiller's :class:`~.module_taps.ModuleTaps` (source ``'taps'``).
    """
    if cfg is None:
        return None
    if source not in level_strides:
        raise ValueError(f'teacher_connectors act on the feature_source ({source!r}) levels, '
                         'which no distillation loss reads')
    if source == 'taps':
        widths = taps.widths('teacher')
    else:
        t_strides = level_strides[source][1]
        num = len(t_strides) if t_strides else len(cfg) if isinstance(cfg, list) else None
        if num is None:
            raise ValueError(f'teacher_connectors: the number of teacher {source} levels is '
                             'unknown; give a list with one dict or None per teacher level')
        widths = [feature_channels(teacher_cfg, source)] * num
    if isinstance(cfg, dict):
        cfg = [cfg] * len(widths)
    if not isinstance(cfg, (list, tuple)) or len(cfg) != len(widths):
        raise ValueError(f'teacher_connectors: expected one dict for every level or a list '
                         f'of {len(widths)} (one dict or None per teacher {source} level), '
                         f'got {cfg!r}')
    norms, in_channels = [], []
    for lvl, (entry, width) in enumerate(zip(cfg, widths)):
        norm, channels = _build_one(lvl, entry, width, source)
        norms.append(norm)
        in_channels.append(channels)
    return TeacherConnectors(norms, in_channels, source)


def _build_one(lvl: int, entry: Optional[dict], width: Optional[int], source: str):
    if entry is None:
        return None, width
    entry = dict(entry)
    if 'norm_cfg' not in entry or set(entry) - {'norm_cfg', 'in_channels'}:
        raise ValueError(f'teacher_connectors[{lvl}]: expected keys norm_cfg[, in_channels], '
                         f'got {sorted(entry)}')
    channels = entry.get('in_channels', width)
    if channels is None:
        raise ValueError(f'teacher_connectors[{lvl}]: the teacher {source} level {lvl} does '
                         'not say its width; give in_channels')
    if width is not None and channels != width:
        raise ValueError(_width_error(lvl, source, channels, width))
    norm = build_norm_layer(dict(entry['norm_cfg']), channels)[1]
    trainable = [name for name, p in norm.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"teacher_connectors[{lvl}]: norm_cfg={entry['norm_cfg']!r} has trainable "
            f'parameters {trainable}; the teacher side runs without gradients, so they '
            'would never train: use affine=False, e.g. MMYOLO\'s '
            "dict(type='BN', affine=False, track_running_stats=False)")
    return norm, channels


def _width_error(lvl: int, source: str, configured: int, actual: int) -> str:
    return (f'teacher_connectors[{lvl}] has in_channels={configured}, but the teacher '
            f'{source} level {lvl} has {actual} channels; set in_channels={actual} '
            '(or leave it out: it is read off the teacher)')
