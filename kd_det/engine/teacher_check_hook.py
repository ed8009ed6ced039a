"""Check at the start of training that the teacher is the dataset's and really detects things."""
from typing import Optional

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from ..analysis.teacher_eval import count_detections, teacher_predictions
from ..models.teacher_classes import dataset_classes


@HOOKS.register_module()
class TeacherCheckHook(Hook):
    """Check the frozen teacher before training: its classes, then a few validation images.

    First compares the class names the teacher checkpoint records with the training
    dataset's (``metainfo['classes']``) and fixes the distiller's ``teacher_class_map``
    (:mod:`kd_det.models.teacher_classes`): a different list or order is refused here,
    before the first iteration, naming the first index that differs. Then logs how many
    detections the teacher makes above ``score_thr`` and its highest score, and warns
    loudly when it makes none: the usual sign of a teacher whose weights did not load or
    belong to another dataset. Costs a few inference steps once per run.

    Args:
        num_batches: validation batches to run (default 2).
        score_thr: a detection counts above this score (default 0.3).
        strict: raise instead of warning when the teacher detects nothing.
    """

    priority = 'LOW'

    def __init__(self, num_batches: int = 2, score_thr: float = 0.3,
                 strict: bool = False) -> None:
        self.num_batches = num_batches
        self.score_thr = score_thr
        self.strict = strict

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        class_map = getattr(model, 'teacher_class_map', None)
        if class_map is not None:
            class_map.check(dataset_classes(getattr(runner.train_dataloader, 'dataset', None)))
        teacher = getattr(model, 'teacher', None)
        loader = runner.val_dataloader if runner.val_loop is not None else runner.train_dataloader
        if teacher is None or loader is None:
            return
        stats = self.check(model, loader)
        if stats is None:
            return
        images, kept, top = stats
        message = (f'teacher check on {images} images: {kept} detections with score '
                   f'>= {self.score_thr}, highest score {top:.3f}')
        if kept == 0:
            message = (f'{message}. The teacher looks UNTRAINED or trained for other '
                       f'classes: check teacher_ckpt ({getattr(model, "teacher_ckpt", "?")}) '
                       'and teacher_config.')
            if self.strict:
                raise RuntimeError(message)
            print_log(message, logger='current', level=30)
        else:
            print_log(message, logger='current')

    def check(self, model, loader) -> Optional[tuple]:
        """``(images, detections >= score_thr, highest score)`` of the teacher on the
        first ``num_batches`` batches of ``loader``, or None when it yields none."""
        images, kept, top = 0, 0, 0.0
        for _, samples in teacher_predictions(model, loader, self.num_batches):
            n, k, t = count_detections(samples, self.score_thr)
            images, kept, top = images + n, kept + k, max(top, t)
        return (images, kept, top) if images else None
