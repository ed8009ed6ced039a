# CrossKD (Wang et al., CVPR 2024), its published RetinaNet pair: RetinaNet R-101-FPN 2x
# (mmdet model zoo, 38.9 box AP) -> RetinaNet R-50-FPN 2x (37.4 alone; published with
# CrossKD: 39.7), MS-COCO, mmdet's RetinaNet 2x recipe (SGD lr 0.01, 8 GPUs x 2 images).
# The student head's features after its 3rd of 4 stacked convs cross into the teacher's
# head (reused_teacher_head_idx=3); on the crossed predictions against the teacher's own:
# KD quality focal loss (beta 1, weight 1) on the class logits at every anchor with a label
# weight, / the student's positives, and GIoU (weight 1) between the boxes both decode,
# weighted by the teacher's top class score: jbwang1997/CrossKD@87e156a's
# configs/crosskd/crosskd_r50_retinanet_r101_fpn_2x_coco.py.
# One difference, kept on purpose: CrossKD's config builds its student's P6/P7 from P5
# (add_extra_convs='on_output'); this student is mmdet's RetinaNet R-50 as it is ('on_input',
# like the R-101 teacher).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_2x_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

model = dict(
    _delete_=True,
    type='FeatureDistillDetector',
    student={{_base_.model}},
    teacher_config='mmdet::retinanet/retinanet_r101_fpn_2x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r101_fpn_2x_coco/retinanet_r101_fpn_2x_coco_20200131-5560aee8.pth',
    reused_teacher_head_idx=3,
    distill_losses=dict(
        loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls', beta=1.0, loss_weight=1.0),
        loss_reg_kd=dict(type='CrossKDBoxLoss', source='cross_reg', loss_weight=1.0)))
custom_hooks = [dict(type='TeacherCheckHook', num_batches=2)]
# Saves atomically: a crash mid-save never leaves a truncated checkpoint behind.
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', interval=1))
