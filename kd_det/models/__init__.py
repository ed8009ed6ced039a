from .feature_distill_detector import FeatureDistillDetector, load_teacher_checkpoint

__all__ = ['FeatureDistillDetector', 'load_teacher_checkpoint']
