# The demo's distillation pair on the synthetic shapes dataset: the ResNet-34 (1/2 width)
# teacher of configs/demo/faster-rcnn_r34-half_fpn_shapes.py -> the ResNet-18 (1/4 width)
# student of configs/demo/faster-rcnn_r18-tiny_fpn_shapes.py; both have 64-channel FPNs.
# tools/demo.py trains the teacher and passes its checkpoint as `model.teacher_ckpt`.
# Method configs add `model.distill_losses`.
_base_ = '../demo/faster-rcnn_r18-tiny_fpn_shapes.py'

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='{{ fileDirname }}/../demo/faster-rcnn_r34-half_fpn_shapes.py',
    teacher_ckpt='work_dirs/kd_det_demo/teacher/teacher.pth',
)
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
