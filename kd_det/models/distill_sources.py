"""What a distillation loss reads (its ``source``), on the student and on the teacher.

- ``'neck'`` / ``'backbone'``: feature levels (N, C, H, W), student level ``i``
  against the teacher level of the same stride.
- ``'taps'``: the outputs of the modules the distiller's ``taps`` option names
  (:mod:`.module_taps`), student tap ``i`` against teacher tap ``i``.
- ``'roi_cls'`` / ``'roi_reg'``: the class logits (R, K + 1) / box deltas of the
  student's RoI head on its own sampled RoIs, against the teacher's RoI head
  evaluated on the same RoIs (teacher features, teacher RoI extractor): row r of
  the student is row r of the teacher.
- ``'roi_embed'``: the embedding the student's box head classifies, the input of
  its ``fc_cls`` (the shared-FC output after its activation, (R, D_s)), on the
  same sampled RoIs, against the teacher box head's (R, D_t) on the same RoIs,
  captured from the same teacher RoI-head call (no second pass). Needs a
  ``ConvFCBBoxHead`` with shared FCs (``Shared2FCBBoxHead``,
  ``Shared4Conv1FCBBoxHead``) on both sides.
- ``'roi_levels'``: the same sampled RoIs pooled on *every* level the box RoI
  extractor reads, with that extractor's own RoI layers (as PANet's adaptive
  feature pooling does), a list of L (R, C, S, S), finest level first: the
  student's from its FPN (with gradient), the teacher's from its own FPN,
  recorded during the same teacher RoI-head call. Needs a RoI extractor over
  at least 2 levels on both sides, the same number on each.
- ``'dense_cls'`` / ``'dense_reg'``: a single-stage head's per-level outputs,
  flattened to one row per prior, (sum_l N * H_l * W_l * A, K) / (..., reg_dim).
- ``'cross_cls'`` / ``'cross_reg'`` / ``'cross_centerness'``: CrossKD: the teacher head's
  class logits / regression / centerness logits (ATSS, FCOS heads) on the student's head
  features (:mod:`.crossing`), rows as ``'dense_*'``, against the teacher's own.

The student is observed, never modified: forward hooks record what its own
``loss()`` computes (:class:`StudentTaps`). The teacher's own modules and head
functions compute the teacher side.
"""
import inspect
from typing import Dict, List, Optional, Sequence, Set

import torch
from mmdet.models.roi_heads.bbox_heads import ConvFCBBoxHead
from torch import Tensor, nn

from .crossing import check_cross_heads

FEATURE_SOURCES = ('neck', 'backbone', 'taps')
ROI_SOURCES = ('roi_cls', 'roi_reg', 'roi_embed', 'roi_levels')
DENSE_SOURCES = ('dense_cls', 'dense_reg')
CROSS_SOURCES = ('cross_cls', 'cross_reg', 'cross_centerness')
SOURCES = FEATURE_SOURCES + ROI_SOURCES + DENSE_SOURCES + CROSS_SOURCES
# A prediction source's output of the head, by its name's last part: (cls, reg, centerness).
HEAD_OUTPUTS = ('cls', 'reg', 'centerness')


class StudentTaps:
    """Context manager: forward hooks recording the student's tensors for ``sources``.

    Records (each must be produced exactly once per ``loss()``): ``'neck'`` /
    ``'backbone'`` outputs, ``'rois'`` (the (R, 5) RoIs given to the box RoI
    extractor), ``'roi'`` (the box head's (cls_score, bbox_pred)),
    ``'roi_embed'`` (the (R, D) input of the box head's ``fc_cls``),
    ``'roi_levels'`` (:func:`roi_level_features` of the RoIs, computed when the box
    RoI extractor is called), ``'dense'`` (the dense head's per-level outputs),
    ``'taps'`` (the outputs of the modules ``module_taps``, a
    :class:`~.module_taps.ModuleTaps`, names for the student).
    """

    def __init__(self, student: nn.Module, sources: Set[str], module_taps=None) -> None:
        self.student = student
        self.sources = sources
        self.records: Dict[str, List] = {}
        self._handles: List = []
        self._taps = None
        if 'taps' in sources:
            if module_taps is None:
                raise ValueError("source 'taps' reads the modules named by the distiller's "
                                 '`taps` option, and none is configured')
            self._taps = module_taps.record('student', student)

    def _record(self, key: str, value) -> None:
        self.records.setdefault(key, []).append(value)

    def __enter__(self) -> 'StudentTaps':
        self.records = {}
        for key in ('neck', 'backbone'):
            if key in self.sources:
                self._hook_output(getattr(self.student, key), key)
        if self.sources & set(ROI_SOURCES):
            roi_head = self.student.roi_head
            self._handles.append(roi_head.bbox_roi_extractor.register_forward_pre_hook(
                lambda module, args: self._record('rois', args[1])))
            if 'roi_levels' in self.sources:
                self._handles.append(roi_head.bbox_roi_extractor.register_forward_pre_hook(
                    lambda module, args: self._record(
                        'roi_levels', roi_level_features(module, args[0], args[1]))))
            self._hook_output(roi_head.bbox_head, 'roi')
            if 'roi_embed' in self.sources:
                self._handles.append(roi_head.bbox_head.fc_cls.register_forward_pre_hook(
                    lambda module, args: self._record('roi_embed', args[0])))
        if self.sources & set(DENSE_SOURCES):
            self._hook_output(self.student.bbox_head, 'dense')
        if self._taps is not None:
            self._taps.__enter__()
        return self

    def _hook_output(self, module: nn.Module, key: str) -> None:
        self._handles.append(module.register_forward_hook(
            lambda m, args, out: self._record(key, out)))

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._taps is not None:
            self._taps.__exit__()

    def get(self, key: str):
        """The one tensor (or tuple) recorded under ``key``; ``'taps'``: the list."""
        if key == 'taps':
            return self._taps.levels()
        values = self.records.get(key, [])
        if len(values) != 1:
            raise RuntimeError(f"expected the student's loss() to compute its {key!r} "
                               f'outputs once, it did {len(values)} times')
        return values[0]


def roi_level_features(extractor: nn.Module, feats: Sequence[Tensor], rois: Tensor
                       ) -> List[Tensor]:
    """Each of the (R, 5) ``rois`` pooled on every level ``extractor`` reads.

    ``extractor`` is a box RoI extractor (mmdet's ``BaseRoIExtractor``); its own
    RoI layers (RoIAlign at each level's stride) pool level l of ``feats``
    (finest first) for all the RoIs: L tensors (R, C, S, S).
    """
    # mmcv's CPU RoIAlign reads the memory as contiguous NCHW whatever the strides
    return [layer(feat.contiguous(), rois)
            for layer, feat in zip(extractor.roi_layers, feats[:extractor.num_inputs])]


@torch.no_grad()
def teacher_roi_outputs(teacher: nn.Module, feats: Sequence[Tensor], rois: Tensor,
                        embed: bool = False, levels: bool = False):
    """(cls_score, bbox_pred, embedding, level features) of the teacher's RoI head on
    ``rois`` (R, 5).

    With ``embed``, the embedding is the (R, D) input of its ``fc_cls``; with
    ``levels``, the level features are :func:`roi_level_features` of its box RoI
    extractor, both recorded by hooks during the same call; else ``None``.
    """
    recorded: Dict[str, object] = {}
    roi_head = teacher.roi_head
    handles = []
    if embed:  # (the hooks return None: a pre-hook's return value replaces the inputs)
        handles.append(roi_head.bbox_head.fc_cls.register_forward_pre_hook(
            lambda module, args: recorded.update(embed=args[0])))
    if levels:
        handles.append(roi_head.bbox_roi_extractor.register_forward_pre_hook(
            lambda module, args: recorded.update(
                levels=roi_level_features(module, args[0], args[1]))))
    try:
        results = roi_head._bbox_forward(tuple(feats), rois)
    finally:
        for handle in handles:
            handle.remove()
    return (results['cls_score'], results['bbox_pred'], recorded.get('embed'),
            recorded.get('levels'))


@torch.no_grad()
def teacher_dense_outputs(teacher: nn.Module, feats: Sequence[Tensor]):
    """The teacher dense head's per-level outputs (cls_scores, bbox_preds, ...)."""
    return teacher.bbox_head(tuple(feats))


def prior_rows(maps: Sequence[Tensor], num_priors: int) -> Tensor:
    """Per-level (N, A * D, H, W) head maps -> (sum N * H * W * A, D) rows, mmdet's order."""
    rows = []
    for m in maps:
        n, c, h, w = m.shape
        rows.append(m.permute(0, 2, 3, 1).reshape(n * h * w * num_priors, c // num_priors))
    return torch.cat(rows)


def prediction_rows(source: str, levels, pairs: Optional[Dict[int, int]], student: dict,
                    teacher: dict, num_priors: Optional[int]):
    """(student rows, teacher rows, teacher class-logit rows) of a prediction source.

    ``student`` / ``teacher``: what the taps and the teacher recorded (``'roi'``,
    ``'roi_embed'``, ``'dense'``); ``pairs``: {student level: teacher level} of a dense
    source; ``num_priors``: priors per location of the dense head.
    """
    if source == 'roi_embed':
        return student['roi_embed'], teacher['roi'][2], teacher['roi'][0]
    if source == 'roi_levels':
        return student['roi_levels'], teacher['roi'][3], teacher['roi'][0]
    index = HEAD_OUTPUTS.index(source.rsplit('_', 1)[1])
    if source in ROI_SOURCES:
        return student['roi'][index], teacher['roi'][index], teacher['roi'][0]
    s_maps, t_maps, t_cls = [], [], []
    for lvl in levels:
        s_map, t_map = student['dense'][index][lvl], teacher['dense'][index][pairs[lvl]]
        if s_map.shape != t_map.shape:
            raise ValueError(f'{source} level {lvl}: student head output '
                             f'{tuple(s_map.shape)} and teacher head output '
                             f'{tuple(t_map.shape)} differ')
        s_maps.append(s_map)
        t_maps.append(t_map)
        t_cls.append(teacher['dense'][0][pairs[lvl]])
    return (prior_rows(s_maps, num_priors), prior_rows(t_maps, num_priors),
            prior_rows(t_cls, num_priors))


def check_sources(sources: Set[str], student: nn.Module, teacher: nn.Module,
                  classes_mapped: bool = False) -> Dict[str, dict]:
    """Refuse sources the models cannot give; return ``{source: derived loss options}``.

    The derived options of a prediction source are ``activation`` ('softmax' or
    'sigmoid') and ``num_classes``, read off the student's head, which must agree
    with the teacher's (``num_classes`` may differ when ``classes_mapped``: the
    distiller's ``teacher_class_map`` maps them, see :mod:`.teacher_classes`).
    """
    derived = {}
    if sources & set(CROSS_SOURCES):  # CrossKD's own refusals first, naming the method
        check_cross_heads(student, teacher, centerness='cross_centerness' in sources)
    for source in sources & set(ROI_SOURCES + DENSE_SOURCES + CROSS_SOURCES):
        kind = 'roi' if source in ROI_SOURCES else 'dense'
        heads = [_prediction_head(model, side, kind, source)
                 for model, side in ((student, 'student'), (teacher, 'teacher'))]
        facts = [_head_facts(head, kind) for head in heads]
        for key in facts[0]:
            if facts[0][key] != facts[1][key] and not (classes_mapped and key == 'num_classes'):
                advice = (': a teacher of another class list needs teacher_class_map'
                          if key == 'num_classes' else '')
                raise ValueError(
                    f"source {source!r}: the student's {type(heads[0]).__name__} and the "
                    f"teacher's {type(heads[1]).__name__} differ in {key}: student "
                    f'{facts[0][key]!r}, teacher {facts[1][key]!r}; logit distillation '
                    f'needs the same classes, activation and priors on both sides{advice}')
        derived[source] = dict(activation=facts[0]['activation'],
                               num_classes=facts[0]['num_classes'])
        if source == 'roi_embed':
            derived[source].update(in_channels=_embedding_channels(heads[0], 'student'),
                                   teacher_channels=_embedding_channels(heads[1], 'teacher'))
        if source == 'roi_levels':
            derived[source].update(_roi_level_facts(student, teacher))
    return derived


def _roi_level_facts(student: nn.Module, teacher: nn.Module) -> dict:
    """``in_channels``, ``teacher_channels`` and ``num_levels`` of source 'roi_levels',
    read off the box RoI extractors; refuses extractors of fewer than 2 levels or of
    different level counts."""
    facts = []
    for model, side in ((student, 'student'), (teacher, 'teacher')):
        extractor = model.roi_head.bbox_roi_extractor
        strides = list(getattr(extractor, 'featmap_strides', []))
        if not isinstance(getattr(extractor, 'roi_layers', None), nn.ModuleList) \
                or len(strides) < 2:
            raise ValueError(
                "source 'roi_levels' pools each RoI on every pyramid level that the box RoI "
                f'extractor reads and fuses the levels; the {side} '
                f'{type(extractor).__name__} reads {len(strides)} level(s) (featmap_strides '
                f'{strides}), which leaves nothing to fuse (a detector without an FPN, such as '
                'Faster R-CNN R-50-C4, has one). It needs a two-stage detector whose box RoI '
                'extractor reads FPN levels (e.g. Faster R-CNN R-50-FPN). Otherwise UniKD reads '
                "source='roi_embed' if the box head has shared FCs (Shared2FCBBoxHead), "
                "and LogitKDLoss source='roi_cls' distils the logits of any box head")
        facts.append((extractor.out_channels, len(strides), strides))
    if facts[0][1] != facts[1][1]:
        raise ValueError(
            f"source 'roi_levels': the student's RoI extractor reads {facts[0][1]} levels "
            f"(strides {facts[0][2]}), the teacher's {facts[1][1]} (strides {facts[1][2]}); "
            'the fusion needs the same number of levels on both sides')
    return dict(in_channels=facts[0][0], teacher_channels=facts[1][0], num_levels=facts[0][1])


def _refuse_detr(model: nn.Module, side: str, source: str) -> None:
    """A DETR-family model has no per-location or per-RoI predictions to pair: refuse it."""
    from mmdet.models.detectors import DetectionTransformer
    if isinstance(model, DetectionTransformer):
        raise ValueError(
            f'source {source!r}: the {side} {type(model).__name__} is a DETR-family '
            'detector; its predictions are per query, not per location or RoI, and the '
            "queries of two detectors do not correspond without a matching, which kd_det "
            "does not build. Distil its features instead: source='neck' (the "
            "ChannelMapper levels, paired by stride) or source='backbone'")


def _embedding_channels(head: nn.Module, side: str) -> int:
    """Width of the embedding ``head`` classifies; refuses heads without shared FCs."""
    if not isinstance(head, ConvFCBBoxHead) or not head.num_shared_fcs \
            or not isinstance(head.fc_cls, nn.Linear):
        raise ValueError(
            f"source 'roi_embed' reads the shared-FC embedding that the box head "
            f'classifies; the {side} box head {type(head).__name__} has none (it needs a '
            'ConvFCBBoxHead with num_shared_fcs >= 1, e.g. Shared2FCBBoxHead or '
            "Shared4Conv1FCBBoxHead). Use source 'roi_cls' for its logits instead")
    return head.fc_cls.in_features


def _prediction_head(model: nn.Module, side: str, kind: str, source: str) -> nn.Module:
    _refuse_detr(model, side, source)
    if kind == 'roi':
        roi_head = getattr(model, 'roi_head', None)
        if roi_head is None:
            raise ValueError(f'source {source!r} needs a two-stage {side} with a RoI head; '
                             f'the {side} {type(model).__name__} has none (single-stage '
                             "detectors give 'dense_cls' / 'dense_reg')")
        extractor = getattr(roi_head, 'bbox_roi_extractor', None)
        first_arg = next(iter(inspect.signature(roi_head._bbox_forward).parameters))
        if not isinstance(extractor, nn.Module) or isinstance(extractor, nn.ModuleList) \
                or first_arg != 'x':
            raise ValueError(f'source {source!r}: the {side} {type(roi_head).__name__} has '
                             'several box stages; RoI sources need one box head '
                             '(StandardRoIHead and its relatives)')
        return roi_head.bbox_head
    if getattr(model, 'roi_head', None) is not None or \
            not hasattr(getattr(model, 'bbox_head', None), 'cls_out_channels'):
        raise ValueError(f'source {source!r} needs a single-stage {side} with a dense head; '
                         f'the {side} {type(model).__name__} is not one (two-stage detectors '
                         "give 'roi_cls' / 'roi_reg')")
    return model.bbox_head


def _head_facts(head: nn.Module, kind: str) -> dict:
    if kind == 'roi':
        if head.custom_cls_channels:
            raise ValueError(f'{type(head).__name__} with {type(head.loss_cls).__name__} '
                             'has custom class channels; RoI logit distillation needs plain '
                             'softmax or sigmoid logits')
        sigmoid = getattr(head.loss_cls, 'use_sigmoid', False)
        return dict(num_classes=head.num_classes, activation='sigmoid' if sigmoid else 'softmax')
    return dict(num_classes=head.num_classes,
                activation='sigmoid' if head.use_sigmoid_cls else 'softmax',
                priors_per_location=head.num_base_priors)


def feature_channels(model_cfg: dict, source: str) -> Optional[int]:
    """Channels of every neck level, from the model config; None if unknown."""
    neck = model_cfg.get('neck')
    if source == 'neck' and isinstance(neck, dict) and isinstance(neck.get('out_channels'), int):
        return neck['out_channels']
    return None


def roi_finest_scale(student: nn.Module) -> Optional[float]:
    """The box-size scale that the student's RoI extractor maps to level 0, if it has one."""
    extractor = getattr(getattr(student, 'roi_head', None), 'bbox_roi_extractor', None)
    return getattr(extractor, 'finest_scale', None)
