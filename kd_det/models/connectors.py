"""Connectors: 1x1 convolutions bringing student levels to the teacher's channels."""
from typing import Collection, Optional

from mmcv.cnn import ConvModule
from torch import nn

KEYS = ('in_channels', 'out_channels', 'norm_cfg', 'act_cfg')


def build_connectors(connectors, num_levels: Optional[int], source: str,
                     read: Collection[int]) -> Optional[nn.ModuleList]:
    """Student-side 1x1 ConvModule adapters on the ``source`` levels some loss reads.

    ``connectors``: one dict ``dict(in_channels, out_channels, norm_cfg=None,
    act_cfg=None)``, built for every level in ``read`` (the levels the losses read),
    or a list with one dict or ``None`` per level, of which a dict on a level no loss
    reads is refused (it would never get a gradient, and DDP with
    ``find_unused_parameters=False`` stops on it). ``None`` (no connectors): None.
    Entry ``i`` of the ModuleList is level ``i``'s connector or ``None``.
    """
    if connectors is None:
        return None
    read = set(read)
    if isinstance(connectors, dict):
        if not read:
            return None
        count = num_levels if num_levels is not None else max(read) + 1
        connectors = [connectors if lvl in read else None for lvl in range(count)]
    else:
        connectors = list(connectors)
        if num_levels is not None and len(connectors) != num_levels:
            raise ValueError(f'connectors: {len(connectors)} entries for the student\'s '
                             f'{num_levels} {source} levels; give one dict or None per level')
        unread = [i for i, cfg in enumerate(connectors) if cfg is not None and i not in read]
        if unread:
            raise ValueError(
                f'connectors: {source} level(s) {unread} have a connector but no '
                f'distillation loss reads them (levels read: {sorted(read)}); its weights '
                'would never get a gradient. Set those entries to None')
        missing = [lvl for lvl in sorted(read) if lvl >= len(connectors)]
        if missing:
            raise ValueError(f'connectors: {len(connectors)} entries, but the losses read '
                             f'{source} level(s) {missing}; give one dict or None per level')
    modules = []
    for i, cfg in enumerate(connectors):
        if cfg is None:
            modules.append(None)
            continue
        cfg = dict(cfg)
        unknown = set(cfg) - set(KEYS)
        if unknown or not {'in_channels', 'out_channels'} <= set(cfg):
            raise ValueError(f'connector {i}: expected keys in_channels, out_channels '
                             f'[, norm_cfg, act_cfg], got {sorted(cfg)}')
        modules.append(ConvModule(cfg['in_channels'], cfg['out_channels'], 1,
                                  norm_cfg=cfg.get('norm_cfg'), act_cfg=cfg.get('act_cfg')))
    return nn.ModuleList(modules)
