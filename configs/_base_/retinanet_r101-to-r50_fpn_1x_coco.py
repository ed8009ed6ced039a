# RetinaNet R-101-FPN teacher (mmdet model zoo, 1x, 38.5 box AP) -> RetinaNet R-50-FPN
# student (ImageNet-pretrained backbone), MS-COCO, 1x schedule, 8 GPUs x 2 images.
# Method configs add `model.distill_losses`.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::retinanet/retinanet_r101_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r101_fpn_1x_coco/retinanet_r101_fpn_1x_coco_20200130-7a93545f.pth',
)
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
