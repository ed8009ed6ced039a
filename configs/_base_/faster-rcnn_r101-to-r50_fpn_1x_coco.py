# Faster R-CNN R-101-FPN teacher (mmdet model zoo, 1x, 39.4 box AP) -> Faster R-CNN
# R-50-FPN student (ImageNet-pretrained backbone), MS-COCO, 1x schedule, 8 GPUs x 2 images.
# Method configs add `model.distill_losses`.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r101_fpn_1x_coco/faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth',
)
# Logs the teacher's detections on two validation batches before training and
# warns when it detects nothing (an unloaded or mismatched teacher).
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
