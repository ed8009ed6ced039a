# A heterogeneous pair: Faster R-CNN R-101-FPN teacher (256-channel neck) -> a cheap
# Faster R-CNN R-18 student with a 128-channel FPN. Student-side 1x1 conv connectors
# (128 -> 256, trained with the student, discarded at export) bridge the channels.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    student=dict(
        backbone=dict(
            depth=18,
            init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet18')),
        neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
        rpn_head=dict(in_channels=128, feat_channels=128),
        roi_head=dict(
            bbox_roi_extractor=dict(out_channels=128),
            bbox_head=dict(in_channels=128))),
    connectors=dict(in_channels=128, out_channels=256),
    distill_losses=dict(
        loss_ssim=dict(type='SSIMLoss', loss_weight=2.0, levels=[0, 1, 2, 3, 4])))
