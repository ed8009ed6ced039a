# CrossKD on the demo's GFL pair (./gfl_r34-half_fpn_shapes.py -> ./gfl_r18-tiny_fpn_shapes.py),
# the COCO recipe of configs/crosskd/: the student head's features after its 1st of 2 stacked
# convs (the default, the last but one) cross into the teacher's head; KD quality focal loss
# and the bins' KL (T 1, summed over bins), at twice the COCO weights (1 and 4), chosen on the
# tune split: 12.9 AP against 11.1 at 1x and 11.3 at 0.5x (docs/demo/tune_sweep.md).
# `python tools/demo.py --family gfl` trains the teacher and passes its checkpoint.
_base_ = './gfl_r18-tiny_fpn_shapes.py'
model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='{{ fileDirname }}/gfl_r34-half_fpn_shapes.py',
    teacher_ckpt='work_dirs/kd_det_demo/gfl/teacher/epoch_16.pth',
    distill_losses=dict(
        loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls', loss_weight=2.0),
        loss_reg_kd=dict(type='CrossKDBinsLoss', source='cross_reg', T=1.0,
                         bin_reduction='sum', loss_weight=8.0)))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
