"""A detector that distils a frozen teacher's neck features into a student."""
import copy
import inspect
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptConfigType
from mmengine.config import Config, ConfigDict
from mmengine.hub import get_config
from mmengine.logging import print_log
from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor, nn

from ..checkpoint import CheckpointError

SPATIAL_ALIGN_MODES = ('error', 'interpolate')
NONFINITE_MODES = ('error', 'skip')
FEATURE_SOURCES = ('neck', 'backbone')


@MODELS.register_module()
class FeatureDistillDetector(BaseDetector):
    """Train any mmdet ``student`` while matching a frozen ``teacher``'s features.

    The teacher is an ordinary mmdet detector built from ``teacher_config``
    and loaded from ``teacher_ckpt`` at construction (a key or shape mismatch
    is an error). It is deliberately *not* a registered submodule: it never
    appears in ``state_dict()`` (checkpoints hold the student, connectors and
    loss heads only; the teacher is reloaded from ``teacher_ckpt``), in
    ``parameters()`` (optimizer, DDP) or in ``init_weights()``, and
    ``train()`` cannot switch it out of eval mode. Device moves (``.to()``,
    ``.cuda()``) do reach it. It runs under ``torch.no_grad()`` and only
    through backbone (+ neck), i.e. as far as feature losses need.

    Validation, test and ``predict`` run the student alone.

    Args:
        student: the student detector's model config (any mmdet detector).
        teacher_config: the teacher's config file (``mmdet::`` paths work), a
            full config dict (with a ``model`` key) or a model dict.
        teacher_ckpt: teacher weights, a local path or an ``http(s)://`` URL.
        distill_losses: ``{log_name: loss_cfg}``; each ``loss_cfg`` is a
            registered loss plus an optional ``levels`` list (default all
            levels), e.g. ``dict(loss_ssim=dict(type='SSIMLoss',
            loss_weight=2.0, levels=[0, 1, 2, 3, 4]))``. Log names must
            start with ``loss_``. Per-level losses are called as
            ``loss(student_l, teacher_l)`` and summed over levels; losses with
            ``multi_level = True`` get the lists of levels and the data samples.
        connectors: student-side adapters to the teacher's channels: one dict
            ``dict(in_channels, out_channels, norm_cfg=None, act_cfg=None)``
            applied (as separate 1x1 ConvModules) to every level, or a list
            with one dict or ``None`` per level.
        spatial_align: ``'error'`` (default) rejects student/teacher levels of
            different size; ``'interpolate'`` resizes the student's level to
            the teacher's bilinearly.
        feature_source: ``'neck'`` (default) or ``'backbone'``.
        teacher_strict: refuse a teacher checkpoint with missing, unexpected
            or mis-shaped keys (default). ``False`` loads what fits and warns
            with the list.
        nonfinite: ``'error'`` raises on a NaN/inf distillation loss, naming
            the loss and level; ``'skip'`` drops that loss for the step and warns.
    """

    def __init__(self,
                 student: ConfigType,
                 teacher_config: Union[str, dict, Config],
                 teacher_ckpt: str,
                 distill_losses: Dict[str, dict],
                 connectors: Union[None, dict, Sequence[Optional[dict]]] = None,
                 spatial_align: str = 'error',
                 feature_source: str = 'neck',
                 teacher_strict: bool = True,
                 nonfinite: str = 'error',
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptConfigType = None) -> None:
        _check_choice('spatial_align', spatial_align, SPATIAL_ALIGN_MODES)
        _check_choice('feature_source', feature_source, FEATURE_SOURCES)
        _check_choice('nonfinite', nonfinite, NONFINITE_MODES)
        if data_preprocessor is None:
            data_preprocessor = student.get('data_preprocessor')
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.spatial_align = spatial_align
        self.feature_source = feature_source
        self.nonfinite = nonfinite

        self.student = MODELS.build(student)
        teacher_model_cfg = _teacher_model_cfg(teacher_config)
        teacher = MODELS.build(teacher_model_cfg)
        load_teacher_checkpoint(teacher, teacher_ckpt, strict=teacher_strict)
        teacher.requires_grad_(False)
        teacher.eval()
        # Bypass nn.Module.__setattr__: see the class docstring.
        self.__dict__['teacher'] = teacher
        self.teacher_ckpt = teacher_ckpt

        num_levels, s_channels = _feature_layout(student, feature_source)
        t_levels, t_channels = _feature_layout(teacher_model_cfg, feature_source)
        if None not in (num_levels, t_levels) and num_levels != t_levels:
            raise ValueError(
                f'student and teacher {feature_source}s give different numbers of '
                f'feature levels: {num_levels} vs {t_levels}')
        self.num_levels = num_levels if num_levels is not None else t_levels
        self.connectors = _build_connectors(connectors, self.num_levels)
        if connectors is None and None not in (s_channels, t_channels) \
                and s_channels != t_channels:
            raise ValueError(
                f'student {feature_source} has {s_channels} channels per level, '
                f'teacher {feature_source} {t_channels}: configure `connectors=dict('
                f'in_channels={s_channels}, out_channels={t_channels})`')
        self.distill_losses, self.loss_levels = _build_losses(
            distill_losses, self.num_levels)
        self._input_renorm = _input_renormalisation(
            data_preprocessor, teacher_model_cfg.get('data_preprocessor'))

    # The teacher is outside ``_modules``; device and dtype moves must reach it.
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        if self._input_renorm is not None:
            self._input_renorm = tuple(
                t if isinstance(t, bool) else fn(t) for t in self._input_renorm)
        return self

    # ---------------------------------------------------------------- student
    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        return self.student.extract_feat(batch_inputs)

    def _forward(self, batch_inputs: Tensor, batch_data_samples: OptConfigType = None):
        return self.student._forward(batch_inputs, batch_data_samples)

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList,
                rescale: bool = True) -> SampleList:
        return self.student.predict(batch_inputs, batch_data_samples, rescale=rescale)

    # ------------------------------------------------------------ distillation
    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict:
        """The student's own losses plus one entry per distillation loss."""
        teacher_feats = self.teacher_features(batch_inputs)
        captured: List = []
        source = self.student.neck if self.feature_source == 'neck' else self.student.backbone
        handle = source.register_forward_hook(lambda m, i, out: captured.append(out))
        try:
            losses = self.student.loss(batch_inputs, batch_data_samples)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(
                f'expected the student to run its {self.feature_source} once per '
                f'loss() call, it ran {len(captured)} times')
        losses.update(self.distill_loss(list(captured[0]), list(teacher_feats),
                                        batch_data_samples))
        return losses

    def teacher_inputs(self, batch_inputs: Tensor) -> Tensor:
        """Student-normalised images renormalised as the teacher's preprocessor would."""
        if self._input_renorm is None:
            return batch_inputs
        scale, shift, flip = self._input_renorm
        return (batch_inputs.flip(1) if flip else batch_inputs) * scale + shift

    @torch.no_grad()
    def teacher_features(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        """The teacher's neck (or backbone) features, without gradient."""
        batch_inputs = self.teacher_inputs(batch_inputs)
        if self.feature_source == 'backbone':
            return self.teacher.backbone(batch_inputs)
        return self.teacher.extract_feat(batch_inputs)

    def distill_loss(self, student_feats: List[Tensor], teacher_feats: List[Tensor],
                     batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Apply connectors, then every configured loss on its levels."""
        if len(student_feats) != len(teacher_feats):
            raise ValueError(f'student gives {len(student_feats)} feature levels, '
                             f'teacher {len(teacher_feats)}')
        used = sorted({lvl for levels in self.loss_levels.values() for lvl in levels})
        if used and used[-1] >= len(student_feats):
            raise ValueError(f'distillation levels {used} exceed the '
                             f'{len(student_feats)} feature levels the model gives')
        student_aligned = {}
        for lvl in used:
            feat = student_feats[lvl]
            if self.connectors is not None and self.connectors[lvl] is not None:
                feat = self.connectors[lvl](feat)
            student_aligned[lvl] = self._align(feat, teacher_feats[lvl], lvl)

        terms: List[Tuple[str, str, Tensor]] = []  # (loss name, level, value)
        for name, loss_module in self.distill_losses.items():
            levels = self.loss_levels[name]
            if getattr(loss_module, 'multi_level', False):
                value = loss_module([student_aligned[lvl] for lvl in levels],
                                    [teacher_feats[lvl] for lvl in levels],
                                    batch_data_samples)
                terms.append((name, f'levels {levels}', value))
            else:
                for lvl in levels:
                    terms.append((name, f'level {lvl}',
                                  loss_module(student_aligned[lvl], teacher_feats[lvl])))
        return self._sum_terms(terms)

    def _align(self, student: Tensor, teacher: Tensor, level: int) -> Tensor:
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f'level {level}: student features {tuple(student.shape)} and teacher '
                f'features {tuple(teacher.shape)} have different channels; configure '
                f'`connectors` in the distillation detector')
        if student.shape[2:] == teacher.shape[2:]:
            return student
        if self.spatial_align == 'interpolate':
            return F.interpolate(student, size=teacher.shape[2:], mode='bilinear',
                                 align_corners=False)
        raise ValueError(
            f'level {level}: student features {tuple(student.shape)} and teacher '
            f'features {tuple(teacher.shape)} differ in size; set '
            f"spatial_align='interpolate' to resize the student's")

    def _sum_terms(self, terms: List[Tuple[str, str, Tensor]]) -> Dict[str, Tensor]:
        losses: Dict[str, Tensor] = {}
        if not terms:
            return losses
        # One host sync for all terms, not one per level.
        finite = torch.isfinite(torch.stack([v.detach().float() for _, _, v in terms]))
        bad = set()
        if not bool(finite.all()):
            culprits = [f'{n} ({where})' for (n, where, _), ok in zip(terms, finite) if not ok]
            if self.nonfinite == 'error':
                raise FloatingPointError(
                    f'non-finite distillation loss: {", ".join(culprits)}. Lower the '
                    f"learning rate or loss weight, or set nonfinite='skip'.")
            print_log(f'skipping non-finite distillation loss this step: '
                      f'{", ".join(culprits)}', logger='current', level=30)
            bad = {i for i, ok in enumerate(finite) if not ok}
        for i, (name, _, value) in enumerate(terms):
            if i in bad:
                value = value.new_zeros(())
            losses[name] = losses[name] + value if name in losses else value
        return losses


# ---------------------------------------------------------------- helpers
def _check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f'{name}={value!r} is not one of {list(choices)}')


def load_config(path: str) -> Config:
    """``Config.fromfile`` that also takes ``mmdet::faster_rcnn/...`` package paths."""
    try:
        return get_config(path) if '::' in path else Config.fromfile(path)
    except (FileNotFoundError, ValueError) as err:
        raise FileNotFoundError(f'teacher_config {path!r}: {err}') from None


def _teacher_model_cfg(teacher_config: Union[str, dict, Config]) -> ConfigDict:
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


def load_teacher_checkpoint(teacher: nn.Module, filename: str, strict: bool = True) -> None:
    """Load ``filename`` into ``teacher``, refusing keys or shapes that do not fit.

    Raises:
        ValueError: ``filename`` is empty.
        FileNotFoundError / CheckpointError: unreadable, unsafe or unfit file.
    """
    if not filename:
        raise ValueError('teacher_ckpt is required: a distillation run with an '
                         'untrained teacher only teaches noise')
    checkpoint = CheckpointLoader.load_checkpoint(filename, map_location='cpu')
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'teacher_ckpt {filename!r} holds a {type(checkpoint).__name__}, '
                              'expected a dict of weights')
    state = checkpoint.get('state_dict', checkpoint)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    own = teacher.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched_keys = [k for k in sorted(own.keys() & state.keys())
                       if getattr(state[k], 'shape', None) != own[k].shape]
    mismatched = [f'{k}: checkpoint {tuple(getattr(state[k], "shape", ()))} vs model '
                  f'{tuple(own[k].shape)}' for k in mismatched_keys]
    if missing or unexpected or mismatched:
        hint = ''
        if any(k.startswith('student.') for k in unexpected):
            hint = (' It looks like a kd_det distillation checkpoint: export its '
                    'student first with tools/export_student.py.')
        message = (f'teacher_ckpt {filename!r} does not fit teacher_config: '
                   f'{len(missing)} missing keys {_head(missing)}, {len(unexpected)} '
                   f'unexpected keys {_head(unexpected)}, {len(mismatched)} shape '
                   f'mismatches {_head(mismatched)}.{hint}')
        if strict:
            raise CheckpointError(message + ' (teacher_strict=False loads what fits.)')
        print_log(message + ' Loading the keys that fit (teacher_strict=False).',
                  logger='current', level=30)
    teacher.load_state_dict(
        {k: v for k, v in state.items() if k in own and k not in mismatched_keys},
        strict=False)


def _head(items: List[str], n: int = 5) -> str:
    return str(items[:n])[:-1] + (', ...]' if len(items) > n else ']')


def _feature_layout(model_cfg: dict, source: str) -> Tuple[Optional[int], Optional[int]]:
    """(number of levels, channels per level) read off a model config, None if unknown."""
    if source == 'neck':
        neck = model_cfg.get('neck')
        if isinstance(neck, dict) and 'out_channels' in neck:
            num = neck.get('num_outs', len(neck.get('in_channels', [])) or None)
            return num, neck['out_channels']
    return None, None


def _build_connectors(connectors, num_levels: Optional[int]) -> Optional[nn.ModuleList]:
    if connectors is None:
        return None
    if isinstance(connectors, dict):
        if num_levels is None:
            raise ValueError('a single connector dict needs a student neck whose '
                             'num_outs is known; give a list with one per level')
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


def _build_losses(distill_losses: Dict[str, dict], num_levels: Optional[int]
                  ) -> Tuple[nn.ModuleDict, Dict[str, List[int]]]:
    if not isinstance(distill_losses, dict) or not distill_losses:
        raise ValueError('distill_losses must be a non-empty dict {log_name: loss_cfg}, '
                         f'got {distill_losses!r}')
    modules, levels_of = nn.ModuleDict(), {}
    for name, cfg in distill_losses.items():
        if not name.startswith('loss_'):
            raise ValueError(f"distill_losses key {name!r} must start with 'loss_' "
                             '(mmengine sums and logs the keys that do)')
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise ValueError(f'distill_losses[{name!r}] must be a dict with a `type`, got {cfg!r}')
        cfg = dict(cfg)
        levels = cfg.pop('levels', None)
        if levels is None:
            if num_levels is None:
                raise ValueError(f'distill_losses[{name!r}]: give `levels`; the number '
                                 'of feature levels is not known from the config')
            levels = list(range(num_levels))
        levels = list(levels)
        bad = [lvl for lvl in levels if not isinstance(lvl, int) or lvl < 0
               or (num_levels is not None and lvl >= num_levels)]
        if bad or not levels:
            raise ValueError(f'distill_losses[{name!r}]: levels {levels} invalid; expected '
                             f'a non-empty list of ints in [0, {num_levels})')
        weight = cfg.get('loss_weight', 1.0)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f'distill_losses[{name!r}]: loss_weight={weight!r}, expected '
                             'a number >= 0')
        modules[name] = _build_loss(name, cfg)
        levels_of[name] = levels
    return modules, levels_of


def _build_loss(name: str, cfg: dict) -> nn.Module:
    loss_cls = MODELS.get(cfg['type'])
    if loss_cls is None:
        from .. import losses as kd_losses
        provided = sorted(n for n, obj in vars(kd_losses).items()
                          if isinstance(obj, type) and issubclass(obj, nn.Module))
        raise KeyError(f'distill_losses[{name!r}]: unknown type {cfg["type"]!r}; kd_det '
                       f'provides {provided}')
    params = inspect.signature(loss_cls.__init__).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = set(cfg) - {'type'} - set(params)
    if unknown and not accepts_any:
        valid = [p for p in params if p not in ('self', 'args', 'kwargs')]
        raise KeyError(f'distill_losses[{name!r}]: {cfg["type"]} has no option(s) '
                       f'{sorted(unknown)}; valid: {valid + ["levels"]}')
    return MODELS.build(cfg)


def _input_renormalisation(student_pre: Optional[dict], teacher_pre: Optional[dict]):
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
