"""The registry scope ``kd_det``: empty children of mmdet's registries.

mmengine tags what a ``kd_det::`` base config defines (the distillation
``model``, ``custom_hooks``) with ``_scope_='kd_det'``, imports
``kd_det.registry`` and builds it from the registry of that scope. kd_det
registers its modules in mmdet's registries, so each child here finds them,
and all of mmdet and mmengine, through its parent.
"""
from mmdet import registry as mmdet_registry
from mmengine.registry import Registry

SCOPE = 'kd_det'


def _child(parent: Registry) -> Registry:
    """An empty ``kd_det`` registry under ``parent``; importing kd_det fills mmdet's."""
    return Registry(parent.name, parent=parent, scope=SCOPE, locations=['kd_det'])


RUNNERS = _child(mmdet_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child(mmdet_registry.RUNNER_CONSTRUCTORS)
LOOPS = _child(mmdet_registry.LOOPS)
HOOKS = _child(mmdet_registry.HOOKS)
DATASETS = _child(mmdet_registry.DATASETS)
DATA_SAMPLERS = _child(mmdet_registry.DATA_SAMPLERS)
TRANSFORMS = _child(mmdet_registry.TRANSFORMS)
MODELS = _child(mmdet_registry.MODELS)
MODEL_WRAPPERS = _child(mmdet_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child(mmdet_registry.WEIGHT_INITIALIZERS)
OPTIMIZERS = _child(mmdet_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child(mmdet_registry.OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmdet_registry.OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child(mmdet_registry.PARAM_SCHEDULERS)
METRICS = _child(mmdet_registry.METRICS)
EVALUATOR = _child(mmdet_registry.EVALUATOR)
TASK_UTILS = _child(mmdet_registry.TASK_UTILS)
VISUALIZERS = _child(mmdet_registry.VISUALIZERS)
VISBACKENDS = _child(mmdet_registry.VISBACKENDS)
LOG_PROCESSORS = _child(mmdet_registry.LOG_PROCESSORS)
