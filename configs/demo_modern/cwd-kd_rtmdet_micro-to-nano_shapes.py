# configs/rtmdet's own cwd-kd form at demo scale (its MMYOLO recipe form:
# ./cwd_rtmdet_micro-to-nano_shapes.py): CWD on the 3 neck levels (the student's 32 channels
# through a 1x1 conv + BN connector to the teacher's 64) and KL on the dense head's sigmoid
# class logits, with the student's EMA and pipeline switch; distillation stops where the
# pipeline switches (`stop_epoch` = the hook's `switch_epoch`, 0-based).
# `model.teacher_ckpt`: a checkpoint of ./rtmdet_micro_shapes.py.
_base_ = './rtmdet_nano_shapes.py'
stop_epoch = _base_.max_epochs - _base_.stage2_num_epochs
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='{{ fileDirname }}/rtmdet_micro_shapes.py',
    teacher_ckpt='work_dirs/kd_det_demo/rtmdet_teacher/epoch_4.pth',
    connectors=dict(in_channels=_base_.model.neck.out_channels, out_channels=64,
                    norm_cfg=dict(type='BN', affine=False, track_running_stats=False)),
    distill_losses=dict(
        loss_cwd=dict(type='CWDLoss', tau=1.0, loss_weight=1.0, stop_epoch=stop_epoch),
        loss_kd_cls=dict(type='LogitKDLoss', source='dense_cls', temperature=1.0,
                         loss_weight=1.0, stop_epoch=stop_epoch)))
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='PipelineSwitchHook', switch_epoch=stop_epoch,
         switch_pipeline={{_base_.train_pipeline_stage2}}),
    dict(type='TeacherCheckHook', num_batches=2),
]
