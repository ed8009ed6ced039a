# SSIM feature distillation (de Rijk et al., NeurIPS 2022) on all 5 FPN levels,
# lambda = 2 (the paper's best are 2 and 4).
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_ssim=dict(type='SSIMLoss', loss_weight=2.0, levels=[0, 1, 2, 3, 4])))
