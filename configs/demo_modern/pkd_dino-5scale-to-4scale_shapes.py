# configs/dino's recipe at demo scale: PKD (weight 6) on the ChannelMapper levels paired by
# stride -- the 5-scale teacher's levels 1..4 (strides 8-64) for the student's 0..3.
# `model.teacher_ckpt`: a checkpoint of ./dino-5scale_r34-half_shapes.py.
_base_ = './dino-4scale_r18-tiny_shapes.py'
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='{{ fileDirname }}/dino-5scale_r34-half_shapes.py',
    teacher_ckpt='work_dirs/kd_det_demo/dino_teacher/epoch_4.pth',
    distill_losses=dict(loss_pkd=dict(type='PKDLoss', loss_weight=6.0)))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
