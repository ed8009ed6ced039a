# PKD on the neck: DINO-5scale Swin-L teacher (mmdet model zoo, 12 epochs, 57.2 box AP) ->
# DINO-4scale R-50 student (49.0 alone), MS-COCO, mmdet's 12-epoch recipe unchanged
# (8 GPUs x 2 images, AdamW 1e-4, backbone lr x 0.1, grad clip 0.1).
# The ChannelMapper levels are paired by stride: the teacher's 5 levels have strides
# 4-64, the student's 4 levels 8-64, so student levels 0..3 read teacher levels 1..4
# (the distiller measures the strides: DETRs have no prior generator). Both have 256
# channels: no connector. PKD standardises each channel, weight 6 as in MMRazor's configs.
# Prediction-level KD is refused for DETR students (their outputs are per query, and two
# DETRs' queries do not correspond without a matching): distil the neck.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::dino/dino-5scale_swin-l_8xb2-12e_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v3.0/dino/dino-5scale_swin-l_8xb2-12e_coco/dino-5scale_swin-l_8xb2-12e_coco_20230228_072924-a654145f.pth',
    distill_losses=dict(loss_pkd=dict(type='PKDLoss', loss_weight=6.0)))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
