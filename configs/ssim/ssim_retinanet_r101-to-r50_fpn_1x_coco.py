# SSIM feature distillation on RetinaNet's 5 FPN levels, lambda = 2
# (paper: RetinaNet R101 -> R50 36.4 -> 40.1 AP; schedule not confirmed, see README).
_base_ = '../_base_/retinanet_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_ssim=dict(type='SSIMLoss', loss_weight=2.0, levels=[0, 1, 2, 3, 4])))
