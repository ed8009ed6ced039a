"""Check at the start of training that the teacher really detects things."""
from typing import Optional

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper


@HOOKS.register_module()
class TeacherCheckHook(Hook):
    """Run the frozen teacher on a few validation images before training.

    Logs how many detections the teacher makes above ``score_thr`` and its
    highest score, and warns loudly when it makes none: the usual sign of a
    teacher whose weights did not load or belong to another dataset. Costs a
    few inference steps once per run.

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
        teacher = getattr(model, 'teacher', None)
        loader = runner.val_dataloader if runner.val_loop is not None else runner.train_dataloader
        if teacher is None or loader is None:
            return
        stats = self.check(model, teacher, loader)
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

    @torch.no_grad()
    def check(self, model, teacher, loader) -> Optional[tuple]:
        images, kept, top = 0, 0, 0.0
        for i, data in enumerate(loader):
            if i >= self.num_batches:
                break
            data = model.data_preprocessor(data, False)
            inputs = model.teacher_inputs(data['inputs'])
            for sample in teacher.predict(inputs, data['data_samples']):
                scores = sample.pred_instances.scores
                images += 1
                kept += int((scores >= self.score_thr).sum())
                top = max(top, float(scores.max()) if scores.numel() else 0.0)
        return (images, kept, top) if images else None
