# CrossKD on the demo's RetinaNet pair (./retinanet_r34-half_fpn_shapes.py ->
# ./retinanet_r18-tiny_fpn_shapes.py), the COCO recipe of configs/crosskd/: the student head's
# features after its 1st of 2 stacked convs (the default, the last but one) cross into the
# teacher's head; KD quality focal loss and GIoU on the decoded boxes. Not tuned on the demo.
# The demo has no trained RetinaNet teacher: pass one with --cfg-options model.teacher_ckpt=...
_base_ = './retinanet_r18-tiny_fpn_shapes.py'
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='{{ fileDirname }}/retinanet_r34-half_fpn_shapes.py',
    teacher_ckpt='work_dirs/kd_det_demo/teacher_retinanet/teacher.pth',
    distill_losses=dict(
        loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls'),
        loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg')))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
