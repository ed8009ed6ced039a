# LD (Zheng et al., CVPR 2022) as mmdet 3.3's configs/ld/ld_r18-gflv1-r101_fpn_1x_coco.py:
# GFL R-101 ms-2x teacher -> GFL R-18 1x student; at the student's (ATSS) positives, the KL of
# the box-distribution bins per side (T 10, weight 0.25), weighted by the student's top class
# score, / 4. The student's own losses are GFL's (QFL 1, DFL 0.25, GIoU 2), as LDHead's.
_base_ = '../_base_/gfl_r101-ms-2x-to-r50_fpn_1x_coco.py'
model = dict(
    student=dict(
        backbone=dict(depth=18, init_cfg=dict(type='Pretrained',
                                              checkpoint='torchvision://resnet18')),
        neck=dict(in_channels=[64, 128, 256, 512])),
    distill_losses=dict(
        loss_ld=dict(type='LDLoss', source='dense_reg', T=10.0, loss_weight=0.25)))
