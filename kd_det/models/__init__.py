from .feature_distill_detector import FeatureDistillDetector
from .teacher import load_config, load_teacher_checkpoint

__all__ = ['FeatureDistillDetector', 'load_config', 'load_teacher_checkpoint']
