# CrossKD (Wang et al., CVPR 2024), its published FCOS pair: FCOS R-101-caffe-FPN GN-head
# multi-scale 2x (mmdet model zoo, 40.8 box AP) -> FCOS R-50-caffe-FPN GN-head multi-scale
# 2x (38.5 alone; published with CrossKD: 41.1), MS-COCO, mmdet's FCOS multi-scale 2x recipe
# (SGD lr 0.01, bias lr x2, gradient clipping 35, 16 images per batch). The student head's
# features after its 2nd of 4 stacked convs cross into the teacher's head
# (reused_teacher_head_idx=2); on the crossed predictions against the teacher's own: KD
# quality focal loss (beta 1, weight 0.4) on the class logits at every point, and IoU (mmdet's
# IoULoss, -log IoU, weight 0.75) between the boxes both decode from the points, weighted by
# the teacher's top class score; both / the sum of the centerness targets at the student's
# positives (mean over GPUs). No centerness KD: jbwang1997/CrossKD@4faccfd's
# configs/crosskd/crosskd_r50_fcos_r101-2x-ms_caffe_fpn_gn-head_2x_ms_coco.py and
# mmdet/models/detectors/crosskd_fcos.py.
_base_ = 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_ms-640-800-2x_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::fcos/fcos_r101-caffe_fpn_gn-head_ms-640-800-2x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/fcos/fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco/fcos_r101_caffe_fpn_gn-head_mstrain_640-800_2x_coco-511424d6.pth',
    reused_teacher_head_idx=2,
    distill_losses=dict(
        loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls', beta=1.0, loss_weight=0.4),
        loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg', loss_weight=0.75,
                         box_loss=dict(type='IoULoss'))))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
