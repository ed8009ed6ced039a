# configs/rtmdet's MMYOLO recipe (cwd_rtmdet_*_300e_coco.py) at demo scale: the raw outputs of
# neck.out_convs.{0,1,2}.conv (before BN and SiLU) tapped on both networks, the student's
# 32 channels through a 1x1 conv + BN (affine=False, batch statistics) to the teacher's 64,
# the teacher's through the same BN; CWD (tau 1, weight 1) on the 3 levels, no logit KD;
# the student's EMA and pipeline switch kept, distillation off from the switch epoch
# (`stop_epoch` = the hook's `switch_epoch`, 0-based).
# `model.teacher_ckpt`: a checkpoint of ./rtmdet_micro_shapes.py.
_base_ = './rtmdet_nano_shapes.py'
stop_epoch = _base_.max_epochs - _base_.stage2_num_epochs
taps = ['neck.out_convs.0.conv', 'neck.out_convs.1.conv', 'neck.out_convs.2.conv']
connector_norm = dict(type='BN', affine=False, track_running_stats=False)
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='{{ fileDirname }}/rtmdet_micro_shapes.py',
    teacher_ckpt='work_dirs/kd_det_demo/rtmdet_teacher/epoch_4.pth',
    feature_source='taps',
    taps=dict(student=taps, teacher=taps),
    connectors=dict(in_channels=_base_.model.neck.out_channels, out_channels=64,
                    norm_cfg=connector_norm),
    teacher_connectors=dict(norm_cfg=connector_norm),
    distill_losses=dict(
        loss_cwd=dict(type='CWDLoss', tau=1.0, loss_weight=1.0, stop_epoch=stop_epoch)))
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='PipelineSwitchHook', switch_epoch=stop_epoch,
         switch_pipeline={{_base_.train_pipeline_stage2}}),
    dict(type='TeacherCheckHook', num_batches=2),
]
