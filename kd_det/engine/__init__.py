from .resume import find_resumable_checkpoint
from .safe_checkpoint_hook import SafeCheckpointHook
from .student_weights_hook import StudentWeightsHook
from .teacher_check_hook import TeacherCheckHook

__all__ = ['SafeCheckpointHook', 'StudentWeightsHook', 'TeacherCheckHook',
           'find_resumable_checkpoint']
