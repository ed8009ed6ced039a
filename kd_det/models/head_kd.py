"""What dense-head KD losses (CrossKD, LD) read beyond the heads' rows, wired in one place.

- ``assignment``: the student's own label assignment of the rows (:mod:`.assignment`);
- ``student_logits``: the student's class-logit rows (dense sources);
- ``reg_form``: regression rows as decoded boxes or as distribution bins;
- the ``'cross_cls'`` / ``'cross_reg'`` / ``'cross_centerness'`` sources: the teacher head's
  predictions on the student's crossed features (:mod:`.crossing`) against the teacher's own.

:class:`HeadKD` does nothing for losses that read none of these; it refuses at build,
naming the loss, the head and what would work, heads that cannot give them.
"""
import contextlib
from typing import Dict, Optional

from mmdet.structures.bbox import get_box_tensor
from torch import nn

from .assignment import AssignmentTap, assignment_rows, check_assignment_readable
from .crossing import HeldFeatures, check_index, cross_predictions
from .distill_sources import (CROSS_SOURCES, DENSE_SOURCES, prediction_rows, prior_rows,
                              teacher_dense_outputs)

ROW_SOURCES = DENSE_SOURCES + CROSS_SOURCES


class HeadKD:
    """The student's assignment, CrossKD's crossing and regression forms for the losses."""

    def __init__(self, losses: nn.ModuleDict, loss_inputs: dict, student: nn.Module,
                 teacher: nn.Module, level_pairs: Dict[str, Dict[int, int]],
                 reused_teacher_head_idx) -> None:
        self.crossing = any(e.source in CROSS_SOURCES for e in loss_inputs.values())
        if not self.crossing and reused_teacher_head_idx is not None:
            raise ValueError(f'reused_teacher_head_idx={reused_teacher_head_idx!r} is set but no '
                             f'loss reads a CrossKD source {list(CROSS_SOURCES)}')
        self.student_head = getattr(student, 'bbox_head', None)
        self.teacher_head = getattr(teacher, 'bbox_head', None)
        self.index = None
        if self.crossing:  # the heads were checked with the sources (check_cross_heads)
            self.index = check_index(self.student_head, self.teacher_head,
                                     reused_teacher_head_idx)
            pairs = level_pairs['neck']
            n_teacher = len(self.teacher_head.prior_generator.strides)
            if pairs != {i: i for i in range(n_teacher)}:
                raise ValueError(
                    "CrossKD runs the teacher's head on the student's head features, level by "
                    'level: the two necks need the same levels (strides), paired one to one; '
                    f'got the pairing {pairs} of {n_teacher} teacher levels')
        self.assigned = False
        for name, (source, _, receives, _) in loss_inputs.items():
            what = f'distill_losses[{name!r}] ({type(losses[name]).__name__})'
            wants = [k for k in ('assignment', 'student_logits') if getattr(receives, k)]
            if (wants or receives.reg_form) and source not in ROW_SOURCES:
                raise ValueError(f'{what} reads {wants or receives.reg_form} of a dense head: '
                                 f"its source must be one of {list(ROW_SOURCES)}, not {source!r}")
            if receives.reg_form and not source.endswith('_reg'):
                raise ValueError(f"{what} reads regression rows: source 'dense_reg' or "
                                 f"'cross_reg', not {source!r}")
            if receives.student_logits and source not in DENSE_SOURCES:
                raise ValueError(f"{what} reads the student's logits: source 'dense_cls' or "
                                 f"'dense_reg', not {source!r}")
            if receives.assignment or receives.reg_form == 'boxes':
                check_assignment_readable(self.student_head, what)
                self.assigned = True
            if receives.reg_form:
                for head, side in ((self.student_head, 'student'), (self.teacher_head, 'teacher')):
                    check_reg_form(receives.reg_form, head, side, what)
            if receives.reg_form == 'boxes' and source == 'dense_reg' \
                    and getattr(self.student_head, 'norm_on_bbox', False):
                raise ValueError(
                    f"{what} decodes the student's own distances, which its "
                    f'{type(self.student_head).__name__} with norm_on_bbox=True gives in '
                    "stride units while training (the teacher's, in eval mode, in pixels); use "
                    "source='cross_reg' (both sides through the teacher's head)")

    def student_taps(self):
        """Context manager around the student's ``loss()``: ``records()`` after it."""
        return _StudentTaps(self)

    def teacher_dense(self, teacher: nn.Module, feats) -> tuple:
        """(the teacher dense head's outputs on ``feats``, its held features when crossing)."""
        if not self.crossing:
            return teacher_dense_outputs(teacher, feats), None
        with HeldFeatures(self.teacher_head, self.index) as held:
            return teacher_dense_outputs(teacher, feats), held.levels

    def cross(self, student: dict, teacher: dict) -> None:
        """Adds ``student['cross']``: the teacher head's outputs on the crossed features."""
        if self.crossing:
            student['cross'] = cross_predictions(self.teacher_head, self.index, student['held'],
                                                 teacher['held'], teacher['neck'])

    def rows(self, source: str, levels, pairs, receives, student: dict, teacher: dict):
        """(student rows, teacher rows, teacher logit rows, extra keyword arguments)."""
        num_priors = self.student_head.num_base_priors
        side = {'dense': student['cross']} if source in CROSS_SOURCES else student
        s_rows, t_rows, t_logits = prediction_rows(source, levels, pairs, side, teacher,
                                                   num_priors)
        extra = {}
        if self.assigned:
            assignment = assignment_rows(student['assignment'], levels)
            if receives.assignment:
                extra['assignment'] = assignment
            if receives.reg_form == 'boxes':
                coder = self.student_head.bbox_coder
                s_rows, t_rows = (get_box_tensor(coder.decode(assignment.priors, rows))
                                  for rows in (s_rows, t_rows))
        if receives.student_logits:
            extra['student_logits'] = prior_rows(
                [student['dense'][0][lvl] for lvl in levels], num_priors)
        return s_rows, t_rows, t_logits, extra


class _StudentTaps(contextlib.ExitStack):
    def __init__(self, kd: HeadKD) -> None:
        super().__init__()
        self.kd = kd
        self.assignment: Optional[AssignmentTap] = None
        self.held: Optional[HeldFeatures] = None

    def __enter__(self) -> '_StudentTaps':
        super().__enter__()
        if self.kd.assigned:
            self.assignment = self.enter_context(AssignmentTap(self.kd.student_head))
        if self.kd.crossing:
            self.held = self.enter_context(HeldFeatures(self.kd.student_head, self.kd.index))
        return self

    def records(self) -> dict:
        out = {}
        if self.assignment is not None:
            out['assignment'] = self.assignment.get()
        if self.held is not None:
            out['held'] = self.held.levels
        return out


def check_reg_form(form: str, head: nn.Module, side: str, what: str) -> None:
    """Refuse a head that cannot give its regression rows as ``form``."""
    bins = hasattr(head, 'integral') and hasattr(head, 'reg_max')
    name = type(head).__name__
    if form == 'bins' and not bins:
        raise ValueError(
            f'{what} distils box-distribution bins (GFL-style heads: an integral over '
            f'reg_max + 1 bins per side); the {side} {name} has none. Use a GFLHead student '
            "and teacher, or distil boxes: CrossKDBoxLoss on source='cross_reg' (RetinaNet, "
            "ATSS, FCOS) or BoxDeltaKDLoss on source='dense_reg'")
    if form == 'boxes' and (bins or not hasattr(head, 'bbox_coder')):
        raise ValueError(
            f'{what} compares decoded boxes, from box deltas and a box coder; the {side} '
            f'{name} has ' + ('distribution bins: use CrossKDBinsLoss' if bins else
                              'no box coder'))

