"""Connectors: 1x1 convolutions bringing student levels to the teacher's channels."""
from typing import Optional

from mmcv.cnn import ConvModule
from torch import nn


def build_connectors(connectors, num_levels: Optional[int]) -> Optional[nn.ModuleList]:
    """Student-side 1x1 ConvModule adapters, one per ``feature_source`` level (None: none).

    ``connectors``: one dict ``dict(in_channels, out_channels, norm_cfg=None,
    act_cfg=None)`` for every one of ``num_levels`` levels, or a list with one dict
    or ``None`` per level.
    """
    if connectors is None:
        return None
    if isinstance(connectors, dict):
        if num_levels is None:
            raise ValueError('a single connector dict needs student levels whose number '
                             'is known; give a list with one per level')
        connectors = [connectors] * num_levels
    modules = []
    for i, cfg in enumerate(connectors):
        if cfg is None:
            modules.append(None)
            continue
        cfg = dict(cfg)
        unknown = set(cfg) - {'in_channels', 'out_channels', 'norm_cfg', 'act_cfg'}
        if unknown or not {'in_channels', 'out_channels'} <= set(cfg):
            raise ValueError(f'connector {i}: expected keys in_channels, out_channels '
                             f'[, norm_cfg, act_cfg], got {sorted(cfg)}')
        modules.append(ConvModule(cfg['in_channels'], cfg['out_channels'], 1,
                                  norm_cfg=cfg.get('norm_cfg'), act_cfg=cfg.get('act_cfg')))
    return nn.ModuleList(modules)
