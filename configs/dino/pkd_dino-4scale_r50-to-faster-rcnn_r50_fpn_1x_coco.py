# PKD across families: DINO-4scale R-50 teacher (mmdet model zoo, 12 epochs, 49.0 box AP)
# -> Faster R-CNN R-50-FPN student (37.4 alone), MS-COCO, mmdet's 1x recipe (8 GPUs x 2
# images, SGD 0.02). Levels paired by stride: the student's FPN has strides 4-64 (P2-P6),
# the teacher's ChannelMapper 8-64, so student levels 1..4 read teacher levels 0..3;
# student level 0 (stride 4) has no partner. Both 256 channels. PKD weight 6 (MMRazor).
# The teacher normalises RGB like the student: no input renormalisation.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v3.0/dino/dino-4scale_r50_8xb2-12e_coco/dino-4scale_r50_8xb2-12e_coco_20221202_182705-55b2bba2.pth',
    distill_losses=dict(loss_pkd=dict(type='PKDLoss', loss_weight=6.0, levels=[1, 2, 3, 4])))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
