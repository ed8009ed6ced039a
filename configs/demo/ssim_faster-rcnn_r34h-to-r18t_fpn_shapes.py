# Demo: SSIM distillation, the COCO recipe (configs/ssim/): 5 FPN levels, lambda 2.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_ssim=dict(type='SSIMLoss', loss_weight=2.0, levels=[0, 1, 2, 3, 4])))
