"""What a distillation loss receives from the distiller, declared on the loss class.

Every loss class says, in one place, how the distiller calls it::

    @MODELS.register_module()
    class RRDLoss(nn.Module):
        receives = Receives(all_levels=True, data_samples=True, rois=True,
                            derived=('in_channels', 'teacher_channels', 'num_levels'))

The distiller's wiring (:mod:`kd_det.models.loss_wiring`) reads ``receives``
and nothing else: it never inspects a signature. A class without ``receives``
gets ``Receives()`` (the plain ``forward(student, teacher)`` of a per-level or
per-row loss, nothing derived).

Call forms, by source (see :mod:`kd_det.models.distill_sources`):

- level sources (``'neck'``, ``'backbone'``): ``forward(s, t)`` once per paired
  level, each (N, C, H, W); or with ``all_levels`` once with the lists of
  levels, ``forward([s_0, ...], [t_0, ...], ...)``.
- row sources (``'roi_*'``, ``'dense_*'``): ``forward(s, t, ...)`` with (R, D)
  rows, row r of the student against row r of the teacher; ``'roi_levels'``
  gives, per side, a list of L (R, C, S, S) RoI features (one per level).

Keyword arguments added when declared:

- ``teacher_logits``: (R, K) class-logit rows of the teacher on the same rows.
- ``batch_data_samples``: the batch's data samples (boxes, labels, ``img_id``).
- ``rois``: (R, 5) ``(image index, x1, y1, x2, y2)`` of the rows (RoI sources).
- ``assignment``: the student dense head's own label assignment of the rows, an
  :class:`kd_det.models.assignment.Assignment` (``labels``, ``label_weights``,
  ``avg_factor``, ``priors``), observed in its ``loss()`` (dense and cross sources).
- ``student_logits``: (R, K) class-logit rows of the student's dense head on the same rows.

``reg_form`` asks for the regression rows of ``'dense_reg'`` / ``'cross_reg'`` in one
form, and the distiller refuses heads that cannot give it: ``'boxes'`` (R, 4) boxes
decoded with the student head's box coder and priors, ``'bins'`` (R, 4 * (reg_max + 1))
box-distribution logits of a GFL-style head.
"""
from typing import NamedTuple, Optional, Tuple

# Options the distiller can read off the models and set on a loss (derived); ``source`` is
# the entry's own, for a loss that reads several sources in different forms.
DERIVED_OPTIONS = ('strides', 'num_levels', 'in_channels', 'teacher_channels', 'finest_scale',
                   'activation', 'num_classes', 'source')
# Forms the distiller can give regression rows in (``Receives.reg_form``).
REG_FORMS = (None, 'boxes', 'bins')


class Receives(NamedTuple):
    """How the distiller calls a loss, and which of its options it derives.

    Attributes:
        all_levels: level sources: one call with every level (lists).
        teacher_logits: also pass ``teacher_logits=`` (row sources).
        data_samples: also pass ``batch_data_samples=``.
        rois: also pass ``rois=`` (RoI sources).
        derived: ``__init__`` options the distiller sets from the models
            (a subset of :data:`DERIVED_OPTIONS`); a configured value that
            disagrees with the models is refused.
        sources: the sources the loss can read (None: any); another
            ``source`` is refused when the distiller is built.
        assignment: also pass ``assignment=`` (the student's dense-head assignment).
        student_logits: also pass ``student_logits=`` (dense and cross sources).
        reg_form: ``None`` (the head's raw regression rows), ``'boxes'`` or ``'bins'``.
    """
    all_levels: bool = False
    teacher_logits: bool = False
    data_samples: bool = False
    rois: bool = False
    derived: Tuple[str, ...] = ()
    sources: Optional[Tuple[str, ...]] = None
    assignment: bool = False
    student_logits: bool = False
    reg_form: Optional[str] = None


def receives_of(loss_cls: type) -> Receives:
    """The ``receives`` declared on ``loss_cls``; ``Receives()`` when it declares none."""
    declared = getattr(loss_cls, 'receives', Receives())
    if not isinstance(declared, Receives):
        raise TypeError(f'{loss_cls.__name__}.receives must be a kd_det Receives(...), '
                        f'got {declared!r}')
    unknown = set(declared.derived) - set(DERIVED_OPTIONS)
    if unknown:
        raise ValueError(f'{loss_cls.__name__}.receives.derived names {sorted(unknown)}; '
                         f'the distiller derives {list(DERIVED_OPTIONS)}')
    if declared.reg_form not in REG_FORMS:
        raise ValueError(f'{loss_cls.__name__}.receives.reg_form={declared.reg_form!r} is not '
                         f'one of {list(REG_FORMS)}')
    return declared
