# MMYOLO's RTMDet distillation recipe (open-mmlab/mmyolo
# configs/rtmdet/distillation/kd_s_rtmdet_m_neck_300e_coco.py) on mmdet's RTMDet:
# RTMDet-m teacher (mmdet model zoo, 49.1 box AP) -> RTMDet-s student (44.5 alone), MS-COCO,
# mmdet's 300-epoch RTMDet-s recipe unchanged (8 GPUs x 32 images, AdamW, CachedMosaic +
# CachedMixUp, plain pipeline for the last 20 epochs, EMA).
# Tapped on both networks: neck.out_convs.{0,1,2}.conv, the raw 3x3 conv output before BN
# and SiLU (MMYOLO's neck.out_layers.{0,1,2}.conv). Student: 1x1 conv (no bias) + BN
# (affine=False, batch statistics), no activation, 128 -> 192 channels; teacher: the same BN.
# CWD (tau 1, weight 1) on the 3 levels; distillation stops at epoch 280, where the pipeline
# switches. MMYOLO's published result for this pair: 44.6 -> 45.7 (teacher 49.3).
_base_ = 'mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

stop_epoch = _base_.max_epochs - _base_.stage2_num_epochs  # 280
taps = ['neck.out_convs.0.conv', 'neck.out_convs.1.conv', 'neck.out_convs.2.conv']
teacher_channels = 192  # RTMDet-m's neck width
connector_norm = dict(type='BN', affine=False, track_running_stats=False)
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::rtmdet/rtmdet_m_8xb32-300e_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v3.0/rtmdet/rtmdet_m_8xb32-300e_coco/rtmdet_m_8xb32-300e_coco_20220719_112220-229f527c.pth',
    feature_source='taps',
    taps=dict(student=taps, teacher=taps),
    connectors=dict(in_channels=_base_.model.neck.out_channels, out_channels=teacher_channels,
                    norm_cfg=connector_norm),
    teacher_connectors=dict(norm_cfg=connector_norm),
    distill_losses=dict(
        loss_cwd=dict(type='CWDLoss', tau=1.0, loss_weight=1.0, stop_epoch=stop_epoch)))
# mmdet's RTMDet hooks (EMA, pipeline switch) kept, the teacher check added.
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='PipelineSwitchHook', switch_epoch=stop_epoch,
         switch_pipeline={{_base_.train_pipeline_stage2}}),
    dict(type='TeacherCheckHook', num_batches=2),
]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
# The recipe's batch, 8 GPUs x 32 images: --auto-scale-lr scales the lr from it (docs/launch.md).
auto_scale_lr = dict(base_batch_size=8 * _base_.train_dataloader.batch_size)
