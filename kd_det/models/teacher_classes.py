"""The teacher's classes against the training dataset's, and an explicit mapping between them.

A prediction loss (logit KD, box KD, UniKD) compares the teacher's class ``k`` with the
student's class ``k``; a teacher trained on another class list, or on the same names in
another order, teaches the wrong class at every index. The teacher checkpoint's
``meta['dataset_meta']['classes']`` (mmdet 2.x: ``meta['CLASSES']``) is therefore compared
with the training dataset's ``metainfo['classes']`` before the first iteration
(:class:`~kd_det.engine.TeacherCheckHook`, and preflight).

The distiller's ``teacher_class_map`` says what is intended:

- ``None`` (default): the lists must be equal, in order; a difference is refused,
  naming the first index that differs. A checkpoint without class names warns once.
- ``'by_name'``: dataset class ``i`` is taught by the teacher class of the same name
  (a teacher trained on a superset, or on another order).
- ``{dataset name: teacher name}``: those classes by the given teacher class (e.g.
  VOC's ``'motorbike'`` by COCO's ``'motorcycle'``), every other one by name.
- ``[teacher index, ...]``: one teacher class index per dataset class, as given (works
  with a checkpoint that records no class names).
- ``'ignore'``: the class lists are unrelated and no loss reads the teacher's
  predictions (feature distillation only); refused with a prediction source.

With a mapping, the teacher's class outputs are re-indexed to the dataset's order before
any loss reads them (:meth:`TeacherClassMap.remap`): class logits keep the mapped
columns (and a softmax head's background column, last), class-specific box deltas the
mapped blocks. A softmax over the kept logits renormalises over the dataset's classes.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

MODES = ('by_name', 'ignore')
ClassMap = Union[None, str, Dict[str, str], Sequence[int]]


def checkpoint_classes(meta: Optional[dict]) -> Optional[Tuple[str, ...]]:
    """The class names a checkpoint's ``meta`` records, or None."""
    meta = meta or {}
    classes = (meta.get('dataset_meta') or {}).get('classes') or meta.get('CLASSES')
    return tuple(classes) if classes else None


def dataset_classes(dataset) -> Optional[Tuple[str, ...]]:
    """``dataset.metainfo['classes']`` (dataset wrappers pass their dataset's), or None."""
    classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
    return tuple(classes) if classes else None


def first_difference(teacher: Sequence[str], dataset: Sequence[str]) -> str:
    """Where two class lists first differ, in words."""
    for i, (t, d) in enumerate(zip(teacher, dataset)):
        if t != d:
            return f'index {i}: teacher {t!r}, dataset {d!r}'
    shorter, longer, side = ((teacher, dataset, 'dataset') if len(teacher) < len(dataset)
                             else (dataset, teacher, 'teacher'))
    return f'index {len(shorter)}: only the {side} has a class there ({longer[len(shorter)]!r})'


class TeacherClassMap:
    """The teacher class of each dataset class, checked once the dataset is known.

    Args:
        class_map: the distiller's ``teacher_class_map`` (see the module docstring).
        teacher_classes: the names the teacher checkpoint records (None: none).
        predictions: whether a loss reads the teacher's predictions.
        teacher_num_classes: classes of the teacher's prediction head (None: no head read).
        student_num_classes: classes of the student's prediction head.
    """

    def __init__(self, class_map: ClassMap, teacher_classes: Optional[Sequence[str]],
                 predictions: bool, teacher_num_classes: Optional[int] = None,
                 student_num_classes: Optional[int] = None, reg_agnostic: bool = True,
                 priors: int = 1) -> None:
        if isinstance(class_map, str) and class_map not in MODES:
            raise ValueError(f'teacher_class_map={class_map!r} is not one of {list(MODES)}, '
                             'a dict {dataset class: teacher class} or a list of teacher '
                             'class indices')
        if class_map == 'ignore' and predictions:
            raise ValueError("teacher_class_map='ignore' is for feature distillation only: a "
                             "loss here reads the teacher's class predictions; map the "
                             "classes ('by_name', a dict or a list of indices) instead")
        if class_map is not None and not isinstance(class_map, (str, dict)):
            class_map = list(class_map)
            bad = [i for i in class_map if not isinstance(i, int) or i < 0 or (
                teacher_num_classes is not None and i >= teacher_num_classes)]
            if bad or (student_num_classes is not None
                       and len(class_map) != student_num_classes):
                raise ValueError(
                    f'teacher_class_map {class_map}: expected one teacher class index in '
                    f'[0, {teacher_num_classes}) per student class ({student_num_classes})')
        self.class_map = class_map
        self.teacher_classes = tuple(teacher_classes) if teacher_classes else None
        self.predictions = predictions
        self.teacher_num_classes = teacher_num_classes
        self.student_num_classes = student_num_classes
        self.reg_agnostic = reg_agnostic  # the teacher's RoI box deltas are class-agnostic
        self.priors = priors  # the teacher dense head's priors per location
        self.checked = False
        self.index: Optional[List[int]] = None  # teacher class of each dataset class
        self._warned = False

    def check(self, classes: Optional[Sequence[str]]) -> None:
        """Check the teacher's classes against the dataset's ``classes`` and fix the
        mapping. Raises ValueError naming the first difference; warns once when either
        side records no class names."""
        self.checked = True
        teacher = self.teacher_classes
        if self.class_map == 'ignore':
            return
        if isinstance(self.class_map, list):
            self.index = self._checked_index(self.class_map, classes)
            return
        if teacher is None or classes is None:
            missing = 'the teacher checkpoint records' if teacher is None else 'the dataset has'
            if self.class_map is not None:
                raise ValueError(
                    f'teacher_class_map={self.class_map!r} maps classes by name, but '
                    f'{missing} no class names; give the teacher class index of each '
                    'dataset class instead: teacher_class_map=[...]')
            self._warn(f'{missing} no class names (checkpoint meta.dataset_meta.classes / '
                       'dataset metainfo classes): the teacher\'s classes are not checked '
                       'against the dataset\'s')
            return
        classes = tuple(classes)
        if self.class_map is None:
            if teacher != classes:
                raise ValueError(
                    f"the teacher's classes ({len(teacher)}) are not the dataset's "
                    f'({len(classes)}): first difference at {first_difference(teacher, classes)}. '
                    'A teacher trained on other classes or another order teaches the wrong '
                    "class at every index: use a teacher of this class list, or state the "
                    "mapping with the distiller's teacher_class_map ('by_name', "
                    "{dataset class: teacher class}, a list of teacher indices, or 'ignore' "
                    'for feature distillation only); see kd_det/models/teacher_classes.py')
            return
        renamed = self.class_map if isinstance(self.class_map, dict) else {}
        unknown = sorted(set(renamed) - set(classes))
        if unknown:
            raise ValueError(f'teacher_class_map names {unknown}, which are not dataset '
                             f'classes (the dataset has {list(classes)})')
        wanted = [renamed.get(name, name) for name in classes]
        missing = [(d, t) for d, t in zip(classes, wanted) if t not in teacher]
        if missing:
            raise ValueError(
                f'teacher_class_map={self.class_map!r}: no teacher class named '
                f'{[t for _, t in missing]} (for dataset classes {[d for d, _ in missing]}); '
                f'the teacher has {list(teacher)}. Add them to a dict '
                '{dataset class: teacher class}')
        self.index = self._checked_index([teacher.index(t) for t in wanted], classes)

    def _checked_index(self, index: List[int], classes: Optional[Sequence[str]]
                       ) -> Optional[List[int]]:
        if classes is not None and len(index) != len(classes):
            raise ValueError(f'teacher_class_map gives {len(index)} teacher classes for the '
                             f"dataset's {len(classes)}")
        identity = index == list(range(len(index))) and \
            self.teacher_num_classes in (None, len(index))
        return None if identity else index

    def _warn(self, message: str) -> None:
        if not self._warned:
            print_log(message, logger='current', level=30)
            self._warned = True

    def remap(self, out: Dict[str, object]) -> Dict[str, object]:
        """The teacher's outputs ``{'roi': (cls, reg[, embed]), 'dense': (cls maps, ...)}``
        with their classes in the dataset's order."""
        if not self.checked:
            if self.class_map not in (None, 'ignore'):
                raise RuntimeError(
                    f'teacher_class_map={self.class_map!r} needs the training dataset\'s '
                    'classes before the first step: add custom_hooks=[dict(type='
                    "'TeacherCheckHook')] (kd_det's configs have it) or call "
                    'model.teacher_class_map.check(dataset_classes)')
            self._warn("the teacher's classes were never checked against the dataset's: "
                       "add custom_hooks=[dict(type='TeacherCheckHook')] to the config")
            self.checked = True
        if self.index is None:
            return out
        k_t = self.teacher_num_classes
        if 'roi' in out:
            cls, reg, *rest = out['roi']
            index = torch.tensor(self.index + [k_t], device=cls.device)  # + background
            cls = cls[:, index]
            if not self.reg_agnostic:
                reg = reg.view(reg.size(0), k_t, -1)[:, index[:-1]].flatten(1)
            out['roi'] = (cls, reg, *rest)
        if 'dense' in out:
            maps, *rest = out['dense']
            out['dense'] = ([self._dense_classes(m, self.priors) for m in maps], *rest)
        return out

    def _dense_classes(self, cls_map: Tensor, priors: int) -> Tensor:
        """(N, A * C_t, H, W) class maps -> (N, A * C_s, H, W), background kept last."""
        n, channels, h, w = cls_map.shape
        per_prior = channels // priors
        index = self.index + ([self.teacher_num_classes]
                              if per_prior == self.teacher_num_classes + 1 else [])
        index = torch.tensor(index, device=cls_map.device)
        return cls_map.view(n, priors, per_prior, h, w)[:, :, index].reshape(n, -1, h, w)


def build_class_map(class_map: ClassMap, teacher: nn.Module, student: nn.Module,
                    prediction_sources: Sequence[str]) -> TeacherClassMap:
    """The distiller's :class:`TeacherClassMap`: the teacher's class names from its
    ``dataset_meta`` (set by the checkpoint loading), its head's from the two models."""
    meta = getattr(teacher, 'dataset_meta', None)
    cross = [s for s in prediction_sources if s.startswith('cross_')]
    if cross and class_map is not None:
        raise ValueError(
            f'teacher_class_map={class_map!r} cannot be combined with the CrossKD sources '
            f'{cross}: their predictions come from the teacher\'s head in its own class order. '
            'Use a teacher trained on the dataset\'s classes (teacher_class_map=None).')
    if not prediction_sources:
        return TeacherClassMap(class_map, checkpoint_classes(dict(dataset_meta=meta)), False)
    roi = any(s.startswith('roi_') for s in prediction_sources)
    heads = [m.roi_head.bbox_head if roi else m.bbox_head for m in (teacher, student)]
    return TeacherClassMap(
        class_map, checkpoint_classes(dict(dataset_meta=meta)), True,
        heads[0].num_classes, heads[1].num_classes,
        reg_agnostic=getattr(heads[0], 'reg_class_agnostic', True),
        priors=getattr(heads[0], 'num_base_priors', 1))
