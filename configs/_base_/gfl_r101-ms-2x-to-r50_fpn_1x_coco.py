# GFL R-101-FPN teacher (mmdet model zoo, multi-scale 2x, 44.7 box AP) -> GFL R-50-FPN
# student (ImageNet-pretrained backbone, 40.2 alone), MS-COCO, mmdet's GFL 1x recipe
# (SGD lr 0.01, 8 GPUs x 2 images). The pair of CrossKD's and LD's published GFL results.
# Both necks are 256-channel P3-P7 FPNs (strides 8-128); both heads are GFLHeads with
# reg_max 16. Method configs add `model.distill_losses`.
_base_ = 'mmdet::gfl/gfl_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::gfl/gfl_r101_fpn_ms-2x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/gfl/gfl_r101_fpn_mstrain_2x_coco/gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth',
)
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
