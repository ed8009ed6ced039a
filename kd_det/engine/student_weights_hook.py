"""Evaluate the student of a distillation checkpoint with the student's own model."""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log

from ..export import student_state_dict


@HOOKS.register_module()
class StudentWeightsHook(Hook):
    """Load a distillation checkpoint into the bare student that tests it.

    When a loaded checkpoint holds a distiller's weights (``student.*`` keys,
    with connectors and loss heads), its ``state_dict`` is replaced by the
    student's weights without the prefix, as ``tools/export_student.py``
    writes them, before the model and the other hooks (EMA) read it. A plain
    detector's checkpoint passes unchanged. kd_det's test tool adds this hook.
    """

    priority = 'VERY_HIGH'  # before EMAHook reads the state_dict

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('state_dict')
        student = student_state_dict(state) if isinstance(state, dict) else {}
        if student:
            checkpoint['state_dict'] = student
            checkpoint.pop('ema_state_dict', None)  # the distiller's EMA copy; unused in test
            print_log(f'loaded the student of a distillation checkpoint ({len(student)} of '
                      f'its {len(state)} tensors)', logger='current')
