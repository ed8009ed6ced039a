from .resume import find_resumable_checkpoint
from .safe_checkpoint_hook import SafeCheckpointHook
from .teacher_check_hook import TeacherCheckHook

__all__ = ['SafeCheckpointHook', 'TeacherCheckHook', 'find_resumable_checkpoint']
