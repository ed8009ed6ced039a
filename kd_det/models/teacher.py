"""The frozen teacher: built from its config, loaded strictly, fed its own normalisation."""
import copy
from typing import Optional, Tuple, Union

import torch
from mmdet.registry import MODELS
from mmengine.config import Config, ConfigDict
from torch import Tensor, nn

from ..checkpoint import load_fitting_weights, read_checkpoint
from ..configs import read_config
from .teacher_classes import checkpoint_classes


def load_config(path: str) -> Config:
    """``Config.fromfile`` that also takes package paths (``mmdet::faster_rcnn/...``)."""
    try:
        return read_config(path)
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(f'teacher_config {path!r}: {err}') from None


def teacher_model_cfg(teacher_config: Union[str, dict, Config]) -> ConfigDict:
    """The teacher's model config from a config path, a full config or a model dict."""
    if isinstance(teacher_config, str):
        teacher_config = load_config(teacher_config)
    cfg = ConfigDict(copy.deepcopy(dict(teacher_config)))
    model = cfg.get('model', cfg)
    if 'type' not in model:
        raise ValueError('teacher_config must be a config file, a config with a '
                         f'`model` key or a model dict with `type`; got keys {list(cfg)}')
    model.pop('init_cfg', None)  # weights come from teacher_ckpt
    if isinstance(model.get('backbone'), dict):
        model['backbone'].pop('init_cfg', None)
    return model


def build_teacher(model_cfg: ConfigDict, checkpoint: str, strict: bool = True) -> nn.Module:
    """The teacher detector, loaded from ``checkpoint``, frozen and in eval mode."""
    teacher = MODELS.build(model_cfg)
    load_teacher_checkpoint(teacher, checkpoint, strict=strict)
    teacher.requires_grad_(False)
    return teacher.eval()


def load_teacher_checkpoint(teacher: nn.Module, filename: str, strict: bool = True) -> None:
    """Load ``filename`` into ``teacher``, refusing keys or shapes that do not fit; the
    class names its meta records become ``teacher.dataset_meta['classes']`` (else None).

    Raises:
        ValueError: ``filename`` is empty.
        FileNotFoundError / CheckpointError: unreadable, unsafe or unfit file.
    """
    if not filename:
        raise ValueError('teacher_ckpt is required: a distillation run with an '
                         'untrained teacher only teaches noise')
    state, meta = read_checkpoint(filename, 'teacher_ckpt')
    load_fitting_weights(teacher, state, f'teacher_ckpt {filename!r}', 'teacher_config',
                         strict=strict, strict_option='teacher_strict')
    classes = checkpoint_classes(meta)  # as mmdet's init_detector keeps them
    teacher.dataset_meta = dict(meta.get('dataset_meta') or {}, classes=classes) \
        if classes else None


def student_preprocessor(given: Optional[dict], student: dict) -> Optional[dict]:
    """The distiller's data preprocessor: the student's, or ``given`` when that is the same
    or the student has none (the student's own is never used: one of two that differ
    would be ignored)."""
    own = student.get('data_preprocessor')
    if given is not None and own is not None and dict(given) != dict(own):
        raise ValueError(f'data_preprocessor {dict(given)} differs from the student\'s '
                         f'{dict(own)}; the distiller runs one: set it in the student config '
                         'alone')
    return own if given is None else given


def input_renormalisation(student_pre: Optional[dict], teacher_pre: Optional[dict]
                          ) -> Optional[Tuple[Tensor, Tensor, bool]]:
    """(scale, shift, flip) mapping student-normalised inputs to the teacher's, or None."""
    if not student_pre or not teacher_pre:
        return None
    keys = ('mean', 'std', 'bgr_to_rgb', 'rgb_to_bgr')
    s = {k: student_pre.get(k) for k in keys}
    t = {k: teacher_pre.get(k) for k in keys}
    if s == t:
        return None
    if s['mean'] is None or t['mean'] is None:
        raise ValueError('student and teacher data_preprocessors normalise differently '
                         f'and one has no mean/std: {s} vs {t}')
    s_mean, s_std = torch.tensor(s['mean']), torch.tensor(s['std'])
    t_mean, t_std = torch.tensor(t['mean']), torch.tensor(t['std'])
    flip = bool(s['bgr_to_rgb'] or s['rgb_to_bgr']) != bool(t['bgr_to_rgb'] or t['rgb_to_bgr'])
    if flip:  # student channel order -> teacher channel order
        s_mean, s_std = s_mean.flip(0), s_std.flip(0)
    # raw = x * s_std + s_mean;  x_t = (raw - t_mean) / t_std
    scale = (s_std / t_std).view(1, -1, 1, 1)
    shift = ((s_mean - t_mean) / t_std).view(1, -1, 1, 1)
    return scale, shift, flip
