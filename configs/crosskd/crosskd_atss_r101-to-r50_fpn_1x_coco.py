# CrossKD (Wang et al., CVPR 2024), its published ATSS pair: ATSS R-101-FPN 1x (mmdet model
# zoo, 41.5 box AP) -> ATSS R-50-FPN 1x (39.4 alone; published with CrossKD: 41.8), MS-COCO,
# mmdet's ATSS 1x recipe (SGD lr 0.01, 16 images per batch). The student head's features
# after its 3rd of 4 stacked convs cross into the teacher's head (reused_teacher_head_idx=3);
# on the crossed predictions against the teacher's own: KD quality focal loss (beta 1,
# weight 1) on the class logits at every anchor with a label weight, / the student's
# positives (mean over GPUs), GIoU (weight 1) between the boxes both decode, weighted by the
# teacher's top class score, and the sigmoid cross-entropy (weight 1) of the crossed
# centerness logits against the teacher's centerness at the student's positives, / the same
# positives: jbwang1997/CrossKD@ae7fba9's configs/crosskd/crosskd_r50_atss_r101_fpn_1x_coco.py
# and mmdet/models/detectors/crosskd_atss.py.
_base_ = 'mmdet::atss/atss_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::atss/atss_r101_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/atss/atss_r101_fpn_1x_coco/atss_r101_fpn_1x_20200825-dfcadd6f.pth',
    reused_teacher_head_idx=3,
    distill_losses=dict(
        loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls', beta=1.0, loss_weight=1.0),
        loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg', loss_weight=1.0),
        loss_center_kd=dict(type='CrossKDCenternessLoss', source='cross_centerness',
                            loss_weight=1.0)))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
