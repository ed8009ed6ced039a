"""Detectors with random weights, initialised as mmengine's runner initialises a model
before training but without downloads: the stand-in teachers of benchmarks and tests.

``init_weights()`` matters: some modules create parameters empty and fill them only there
(mmdet's DINO ``level_embed`` is ``torch.Tensor(...)``, whatever memory it got, 5.5e25
seen), so a model that skips it can hold non-finite values.
"""
import logging
from typing import Any

import torch
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from torch import nn


def without_pretrained(cfg: Any) -> Any:
    """A copy of a (nested) config with every ``init_cfg`` of type ``Pretrained`` dropped
    (an ``init_cfg`` left empty becomes None); everything else as it was."""
    if isinstance(cfg, dict):
        out = {k: without_pretrained(v) for k, v in cfg.items()}
        init = out.get('init_cfg')
        inits = init if isinstance(init, list) else [init] if isinstance(init, dict) else []
        kept = [i for i in inits if i.get('type') != 'Pretrained']
        if len(kept) < len(inits):
            out['init_cfg'] = kept or None
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(without_pretrained(v) for v in cfg)
    return cfg


def quiet_init_weights(model: nn.Module) -> nn.Module:
    """``model.init_weights()`` with mmengine's logger at WARNING (it logs every
    parameter's initialisation at INFO); returns ``model``."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def random_detector(model_cfg: dict, seed: int = 0) -> nn.Module:
    """``model_cfg`` built and initialised under ``torch.manual_seed(seed)``, its
    ``Pretrained`` init_cfgs dropped."""
    torch.manual_seed(seed)
    model = MODELS.build(ConfigDict(without_pretrained(dict(model_cfg))))
    return quiet_init_weights(model)


def save_random_detector(model_cfg: dict, path: str, seed: int = 0) -> str:
    """:func:`random_detector`'s weights saved as an mmengine checkpoint at ``path``;
    returns ``path``."""
    torch.save({'state_dict': random_detector(model_cfg, seed).state_dict()}, path)
    return path
