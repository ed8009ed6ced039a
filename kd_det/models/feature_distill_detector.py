"""A detector that distils a frozen teacher's features and predictions into a student."""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, OptConfigType
from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor

from .connectors import build_connectors
from .distill_sources import (DENSE_SOURCES, FEATURE_SOURCES, ROI_SOURCES, StudentTaps,
                              check_sources, feature_channels, prediction_rows, roi_finest_scale,
                              teacher_roi_outputs)
from .head_kd import ROW_SOURCES, HeadKD
from .level_pairing import (align_paired_level, describe_pairs, explicit_pairs, level_strides,
                            level_strides_if_known, pair_levels)
from .loss_schedule import training_progress
from .loss_wiring import build_losses, loss_levels, loss_sources
from .module_taps import build_taps, teacher_levels
from .nonfinite import NonFinitePolicy
from .teacher import (build_teacher, input_renormalisation, student_preprocessor,
                      teacher_model_cfg)
from .teacher_classes import build_class_map
from .teacher_connectors import build_teacher_connectors

SPATIAL_ALIGN_MODES = ('error', 'interpolate')


@MODELS.register_module()
class FeatureDistillDetector(BaseDetector):
    """Train any mmdet ``student`` while matching a frozen ``teacher``.

    The teacher is an ordinary mmdet detector built from ``teacher_config``
    and loaded from ``teacher_ckpt`` at construction (a key or shape mismatch
    is an error). It is deliberately *not* a registered submodule: it never
    appears in ``state_dict()`` (checkpoints hold the student, connectors and
    loss heads only), in ``parameters()`` (optimizer, DDP) or in
    ``init_weights()``, and ``train()`` cannot switch it out of eval mode.
    Device moves do reach it. It runs under ``torch.no_grad()``, only as far as
    the configured losses read: backbone (+ neck) for feature losses, its RoI
    head on the student's RoIs or its dense head for prediction losses.

    The student runs its own ``loss()``, untouched; forward hooks record the
    tensors the losses read. Validation, test and ``predict`` run it alone.

    Args:
        student: the student detector's model config (any mmdet detector).
        teacher_config: the teacher's config file (``mmdet::`` paths work), a
            full config dict (with a ``model`` key) or a model dict.
        teacher_ckpt: teacher weights, a local path or an ``http(s)://`` URL.
        distill_losses: ``{log_name: loss_cfg}``; each ``loss_cfg`` is a
            registered loss plus optional ``source`` (default
            ``feature_source``; one of ``'neck'``, ``'backbone'``, ``'taps'``, ``'roi_cls'``,
            ``'roi_reg'``, ``'roi_embed'``, ``'roi_levels'``, ``'dense_cls'``, ``'dense_reg'``,
            ``'cross_cls'``, ``'cross_reg'``, ``'cross_centerness'``),
            ``levels`` (student levels; default every student level with a
            teacher partner), ``warmup_iters`` and ``stop_epoch`` (see
            :mod:`.loss_schedule`). Log names must start with ``loss_`` and
            differ from the student's own loss names.
        level_pairs: ``[(student_level, teacher_level), ...]`` overriding the
            pairing by equal stride.
        connectors: student-side 1x1 ConvModule adapters to the teacher's
            channels on the ``feature_source`` levels: one dict
            ``dict(in_channels, out_channels, norm_cfg=None, act_cfg=None)`` for
            every level, or a list with one dict or ``None`` per level.
        teacher_connectors: parameter-free norms of the teacher's ``feature_source``
            levels, ``dict(norm_cfg)`` or a list (:mod:`.teacher_connectors`).
        taps: ``dict(student=[module path, ...], teacher=[...])``, the modules that
            source ``'taps'`` reads, tap i against tap i (:mod:`.module_taps`).
        spatial_align: ``'error'`` (default) rejects paired levels of different
            size; ``'interpolate'`` resizes the student's level bilinearly
            (for rounding differences: the levels are already of equal stride).
        feature_source: the default ``source``, ``'neck'``, ``'backbone'`` or ``'taps'``.
        teacher_strict: refuse a teacher checkpoint with missing, unexpected
            or mis-shaped keys (default). ``False`` loads what fits and warns.
        nonfinite: a NaN/inf distillation loss: ``'error'`` raises, naming the
            loss and level; ``'skip'`` drops it for the step (zero gradients);
            ``'auto'`` is ``'error'``, or under AMP leaves the step to the loss
            scaler (see :mod:`.nonfinite`).
        nonfinite_limit: under ``'skip'`` or AMP, this many consecutive steps with
            a non-finite distillation loss stop the run.
        reused_teacher_head_idx: CrossKD (``'cross_*'`` sources): the student head's
            stacked conv after which its features cross into the teacher's head
            (default: the last but one, CrossKD's 3 of 4; see :mod:`.crossing`).
        teacher_class_map: how the teacher's classes map to the dataset's (None: equal,
            checked before training); see :mod:`.teacher_classes`.
    """

    def __init__(self,
                 student: ConfigType,
                 teacher_config: Union[str, dict, Config],
                 teacher_ckpt: str,
                 distill_losses: Dict[str, dict],
                 level_pairs: Optional[Sequence[Sequence[int]]] = None,
                 connectors: Union[None, dict, Sequence[Optional[dict]]] = None,
                 teacher_connectors=None, taps: Optional[dict] = None,
                 spatial_align: str = 'error',
                 feature_source: str = 'neck',
                 teacher_strict: bool = True,
                 nonfinite: str = 'auto',
                 nonfinite_limit: int = 10,
                 reused_teacher_head_idx: Optional[int] = None,
                 teacher_class_map=None,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptConfigType = None) -> None:
        _check_choice('spatial_align', spatial_align, SPATIAL_ALIGN_MODES)
        _check_choice('feature_source', feature_source, FEATURE_SOURCES)
        nonfinite_policy = NonFinitePolicy(nonfinite, nonfinite_limit)
        data_preprocessor = student_preprocessor(data_preprocessor, student)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.spatial_align = spatial_align
        self.feature_source = feature_source
        self.nonfinite = nonfinite_policy
        sources = loss_sources(distill_losses, feature_source)

        # A copy: mmdet's DETR detectors edit their head's config in place, and the caller's
        # config must still build the same student (the analysis tools build it alone).
        self.student = MODELS.build(copy.deepcopy(student))
        teacher_cfg = teacher_model_cfg(teacher_config)
        # Bypass nn.Module.__setattr__: see the class docstring.
        self.__dict__['teacher'] = build_teacher(teacher_cfg, teacher_ckpt, teacher_strict)
        self.teacher_ckpt = teacher_ckpt
        self._input_renorm = input_renormalisation(
            data_preprocessor, teacher_cfg.get('data_preprocessor'))

        self.sources = set(sources.values())
        self.taps = build_taps(taps, self.sources, self.student, self.teacher)
        derived = check_sources(self.sources, self.student, self.teacher,
                                teacher_class_map not in (None, 'ignore'))
        self.teacher_class_map = build_class_map(teacher_class_map, self.teacher, self.student,
                                                 sorted(self.sources - set(FEATURE_SOURCES)))
        # Dense heads read the neck levels, so dense sources pair like the neck.
        level_kinds = {s if s in FEATURE_SOURCES else 'neck'
                       for s in self.sources if s not in ROI_SOURCES}
        self.level_pairs: Dict[str, Dict[int, int]] = {}
        self.level_strides: Dict[str, Tuple[Optional[list], Optional[list]]] = {}
        for kind in sorted(level_kinds):
            self._pair_levels(kind, level_pairs)
        for source in ROW_SOURCES:
            if source in self.sources:
                self.level_pairs[source] = self.level_pairs['neck']
                self.level_strides[source] = self.level_strides['neck']
        num_levels = {kind: len(s) if s else None
                      for kind, (s, _) in self.level_strides.items()}
        if self.taps is not None:  # taps have no strides
            num_levels['taps'] = len(self.taps.paths['student'])

        levels_read = loss_levels(distill_losses, sources,
                                  {k: sorted(v) for k, v in self.level_pairs.items()}, num_levels)
        self.connectors = build_connectors(
            connectors, num_levels.get(feature_source), feature_source,
            {lvl for name, levels in levels_read.items() if sources[name] == feature_source
             for lvl in levels})
        self.teacher_connectors = build_teacher_connectors(
            teacher_connectors, feature_source, teacher_cfg, self.level_strides, self.taps)
        s_channels = feature_channels(student, feature_source)
        t_channels = feature_channels(teacher_cfg, feature_source)
        if connectors is None and feature_source in self.sources \
                and None not in (s_channels, t_channels) and s_channels != t_channels:
            raise ValueError(
                f'student {feature_source} has {s_channels} channels per level, '
                f'teacher {feature_source} {t_channels}: configure `connectors=dict('
                f'in_channels={s_channels}, out_channels={t_channels})`')
        for kind in level_kinds & set(FEATURE_SOURCES):
            derived[kind] = self._level_options(kind, student, teacher_cfg)
        self._checked_length = (None, None)  # the training length the schedule was checked on
        self.distill_losses, self.loss_inputs = build_losses(
            distill_losses, sources, levels_read, derived)
        self.head_kd = HeadKD(self.distill_losses, self.loss_inputs, self.student, self.teacher,
                              self.level_pairs, reused_teacher_head_idx)

    def _pair_levels(self, kind: str, level_pairs) -> None:
        """Pair the student's and teacher's ``kind`` ('neck'/'backbone') levels; log it."""
        if kind == 'taps':  # no strides: tap i pairs with tap i, or as level_pairs says
            strides, (pairs, how) = (None, None), self.taps.pairs(level_pairs)
        elif level_pairs is None:
            strides = (level_strides(self.student, kind), level_strides(self.teacher, kind))
            pairs, how = pair_levels(*strides), 'by stride'
        else:
            strides = tuple(level_strides_if_known(m, kind) for m in (self.student, self.teacher))
            pairs, how = explicit_pairs(level_pairs, *(len(s) if s else None
                                                       for s in strides)), 'level_pairs'
        self.level_pairs[kind], self.level_strides[kind] = pairs, strides
        print_log(f'{kind} level pairing ({how}): {describe_pairs(pairs, *strides)}',
                  logger='current')

    def _level_options(self, kind: str, student_cfg: dict, teacher_cfg: dict) -> dict:
        """Loss options a level source determines, as functions of the loss's levels."""
        s_strides = self.level_strides[kind][0]
        s_channels = feature_channels(student_cfg, kind)
        t_channels = feature_channels(teacher_cfg, kind)

        def student_channels(levels):
            per_level = []
            for lvl in levels:
                conv = self.connectors[lvl] if self.connectors is not None and \
                    kind == self.feature_source and lvl < len(self.connectors) else None
                per_level.append(conv.conv.out_channels if conv is not None else s_channels)
            return _uniform(per_level)

        return dict(
            strides=(lambda levels: [s_strides[lvl] for lvl in levels]) if s_strides else None,
            in_channels=student_channels,
            teacher_channels=t_channels,
            finest_scale=roi_finest_scale(self.student))

    # Copies (mmengine's EMA deep-copies the model) share the frozen teacher.
    def __deepcopy__(self, memo):
        memo[id(self.teacher)] = self.teacher
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

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
        factors = self._schedule_factors()
        with StudentTaps(self.student, self.sources, self.taps) as taps, \
                self.head_kd.student_taps() as head_taps:
            losses = self.student.loss(batch_inputs, batch_data_samples)
        clash = sorted(set(losses) & set(self.distill_losses))
        if clash:
            raise ValueError(f'distill_losses {clash} would replace the student '
                             f"{type(self.student).__name__}'s own loss(es) of the same name "
                             f'(its losses: {sorted(losses)}); rename the distillation '
                             f"entries, e.g. 'loss_kd_{clash[0][len('loss_'):]}'")
        if not any(factors.values()):  # every loss is off: no teacher pass
            losses.update({name: self._zero(name) for name in factors})
            return losses
        student = {key: taps.get(key) for key in self._student_keys()}
        teacher = self.teacher_outputs(batch_inputs, student.get('rois'))
        student.update(head_taps.records())  # the student's assignment, CrossKD's features
        self.head_kd.cross(student, teacher)
        losses.update(self.distill_loss(student, teacher, batch_data_samples, factors))
        losses.update(self.nonfinite.log_vars())
        return losses

    def _schedule_factors(self) -> Dict[str, float]:
        """``{loss name: weight factor}`` at the training loop's iteration and epoch."""
        iteration, epoch, max_iters, max_epochs = training_progress()
        if (max_iters, max_epochs) != self._checked_length:  # once per training length
            for name, entry in self.loss_inputs.items():
                entry.schedule.check_fits(name, max_iters, max_epochs)
            self._checked_length = (max_iters, max_epochs)
        return {name: entry.schedule.factor(iteration, epoch)
                for name, entry in self.loss_inputs.items()}

    def _zero(self, name: str) -> Tensor:
        """0 for a loss that is off, attached to its parameters and the connectors'
        (DDP then still sees a gradient, zero, for every parameter)."""
        params = list(self.distill_losses[name].parameters())
        params += list(self.connectors.parameters()) if self.connectors is not None else []
        zero = torch.zeros((), device=next(self.student.parameters()).device)
        return sum((p.view(-1)[0] * 0 for p in params if p.requires_grad), zero)

    def _student_keys(self) -> List[str]:
        keys = [s for s in FEATURE_SOURCES if s in self.sources]
        if self.sources & set(ROI_SOURCES):
            keys += ['rois', 'roi']
        keys += [k for k in ('roi_embed', 'roi_levels') if k in self.sources]
        if self.sources & set(DENSE_SOURCES):
            keys.append('dense')
        return keys

    def teacher_inputs(self, batch_inputs: Tensor) -> Tensor:
        """Student-normalised images renormalised as the teacher's preprocessor would."""
        if self._input_renorm is None:
            return batch_inputs
        scale, shift, flip = self._input_renorm
        return (batch_inputs.flip(1) if flip else batch_inputs) * scale + shift

    @torch.no_grad()
    def teacher_outputs(self, batch_inputs: Tensor, rois: Optional[Tensor] = None,
                        features_only: bool = False) -> Dict[str, object]:
        """What the losses read of the teacher: 'neck', 'backbone', 'taps', 'roi', 'dense';
        the ``feature_source`` levels through the teacher connectors (its heads read raw).

        ``rois`` (R, 5) are the student's sampled RoIs, needed by RoI sources;
        ``features_only`` skips the heads (the feature levels alone).
        """
        out: Dict[str, object] = teacher_levels(
            self.teacher, self.teacher_inputs(batch_inputs), self.sources, self.taps)
        if self.sources & set(ROI_SOURCES) and not features_only:
            out['roi'] = teacher_roi_outputs(self.teacher, out['neck'], rois,
                                             embed='roi_embed' in self.sources,
                                             levels='roi_levels' in self.sources)
        if self.sources & set(ROW_SOURCES) and not features_only:
            out['dense'], out['held'] = self.head_kd.teacher_dense(self.teacher, out['neck'])
        if self.teacher_connectors is not None:
            out[self.feature_source] = self.teacher_connectors(out[self.feature_source])
        return self.teacher_class_map.remap(out)  # classes in the dataset's order

    def distill_loss(self, student: Dict[str, object], teacher: Dict[str, object],
                     batch_data_samples: SampleList,
                     factors: Optional[Dict[str, float]] = None) -> Dict[str, Tensor]:
        """Every configured loss on its inputs: ``{'neck': [levels], 'roi': (cls, reg), ...}``,
        times its schedule factor (``factors``; default 1); a loss at factor 0 is not run."""
        terms: List[Tuple[str, str, Tensor]] = []  # (loss name, where, value)
        aligned: Dict[Tuple[str, int], Tensor] = {}
        for name, loss_module in self.distill_losses.items():
            factor = 1. if factors is None else factors[name]
            if factor == 0:
                terms.append((name, 'off', self._zero(name)))
                continue
            source, levels, receives, _ = self.loss_inputs[name]
            extra = dict(batch_data_samples=batch_data_samples) if receives.data_samples else {}
            if source in FEATURE_SOURCES:
                pairs = self.level_pairs[source]
                s_levels = [self._aligned(aligned, student, teacher, source, lvl)
                            for lvl in levels]
                t_levels = [teacher[source][pairs[lvl]] for lvl in levels]
                if receives.all_levels:
                    values = [(f'levels {levels}', loss_module(s_levels, t_levels, **extra))]
                else:
                    values = [(f'level {lvl}', loss_module(s, t, **extra))
                              for lvl, s, t in zip(levels, s_levels, t_levels)]
            else:
                if source in ROW_SOURCES:  # dense heads: HeadKD adds their extras
                    s_rows, t_rows, t_logits, more = self.head_kd.rows(
                        source, levels, self.level_pairs[source], receives, student, teacher)
                    extra.update(more)
                else:
                    s_rows, t_rows, t_logits = prediction_rows(source, levels, None, student,
                                                               teacher, None)
                if receives.teacher_logits:
                    extra['teacher_logits'] = t_logits
                if receives.rois:
                    extra['rois'] = student['rois']
                values = [(source, loss_module(s_rows, t_rows, **extra))]
            terms += [(name, where, value * factor if factor != 1 else value)
                      for where, value in values]
        return self._sum_terms(terms)

    def paired_features(self, student_feats: List[Tensor], teacher_feats: List[Tensor],
                        source: str) -> Tuple[Dict[int, Tensor], Dict[int, Tensor]]:
        """``({student level: aligned student level}, {student level: teacher partner})``,
        over the paired levels (with connectors: the levels a loss reads, those with one)."""
        if source not in self.level_pairs:
            raise ValueError(f'no distillation loss reads {source!r} levels, so none are '
                             f'paired; paired sources: {sorted(self.level_pairs)}')
        student, teacher = {source: student_feats}, {source: teacher_feats}
        pairs = self.level_pairs[source]
        if source == self.feature_source and self.connectors is not None:
            read = {lvl for e in self.loss_inputs.values() if e.source == source
                    for lvl in e.levels}
            pairs = {lvl: t_lvl for lvl, t_lvl in pairs.items() if lvl in read}
        return ({lvl: self._aligned({}, student, teacher, source, lvl) for lvl in pairs},
                {lvl: teacher_feats[t_lvl] for lvl, t_lvl in pairs.items()})

    def _aligned(self, cache: dict, student: dict, teacher: dict, source: str,
                 lvl: int) -> Tensor:
        """Student level ``lvl`` through its connector, sized like its teacher partner."""
        if (source, lvl) not in cache:
            feat = student[source][lvl]
            if source == self.feature_source and self.connectors is not None \
                    and lvl < len(self.connectors) and self.connectors[lvl] is not None:
                feat = self.connectors[lvl](feat)
            t_lvl = self.level_pairs[source][lvl]
            cache[source, lvl] = align_paired_level(feat, teacher[source][t_lvl], lvl, t_lvl,
                                                    self.spatial_align)
        return cache[source, lvl]

    def _sum_terms(self, terms: List[Tuple[str, str, Tensor]]) -> Dict[str, Tensor]:
        losses: Dict[str, Tensor] = {}
        for (name, _, _), value in zip(terms, self.nonfinite.apply(terms, self._zero)):
            losses[name] = losses[name] + value if name in losses else value
        return losses


def _check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f'{name}={value!r} is not one of {list(choices)}')


def _uniform(values: List):
    return values[0] if len(set(values)) == 1 else values
