# kd_det's own pair and recipe, no published result for this pair (MMYOLO's recipe and
# pairs: ./cwd_rtmdet_*_300e_coco.py).
# CWD + dense logit KD: RTMDet-x teacher (mmdet model zoo, 52.6 box AP) -> RTMDet-s student
# (44.5 alone), MS-COCO, mmdet's 300-epoch recipe unchanged: 8 GPUs x 32 images, AdamW,
# CachedMosaic + CachedMixUp for 280 epochs, then the plain pipeline (PipelineSwitchHook),
# EMA (ExpMomentumEMA) of what trains. The teacher sees the student's augmented batch.
# Losses: CWD (tau 1, weight 1) on the 3 CSPNeXtPAFPN levels, the student's 128-channel
# levels through a 1x1 conv + BN (affine=False, batch statistics) connector to the
# teacher's 320 channels, and KL on the dense head's sigmoid class logits (one prior per
# location). Distillation stops where the pipeline switches (`stop_epoch`, 0-based, as
# the hook's `switch_epoch`): the student fine-tunes alone for the last 20 epochs.
_base_ = 'mmdet::rtmdet/rtmdet_s_8xb32-300e_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

stop_epoch = _base_.max_epochs - _base_.stage2_num_epochs  # 280
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::rtmdet/rtmdet_x_8xb32-300e_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v3.0/rtmdet/rtmdet_x_8xb32-300e_coco/rtmdet_x_8xb32-300e_coco_20220715_230555-cc79b9ae.pth',
    connectors=dict(in_channels=_base_.model.neck.out_channels, out_channels=320,
                    norm_cfg=dict(type='BN', affine=False, track_running_stats=False)),
    distill_losses=dict(
        loss_cwd=dict(type='CWDLoss', tau=1.0, loss_weight=1.0, stop_epoch=stop_epoch),
        loss_kd_cls=dict(type='LogitKDLoss', source='dense_cls', temperature=1.0,
                         loss_weight=1.0, stop_epoch=stop_epoch)))
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
# The learning rate is mmdet's for the recipe's batch, 8 GPUs x 32 (mmdet's RTMDet configs
# inherit schedule_1x's 16): --auto-scale-lr scales from the real one.
auto_scale_lr = dict(base_batch_size=8 * _base_.train_dataloader.batch_size)
