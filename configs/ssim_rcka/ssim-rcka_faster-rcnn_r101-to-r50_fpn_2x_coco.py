# SSIM (5 levels, lambda 2) and RCKA (levels 0..3, intra + inter, weights 10) together;
# each is logged separately (loss_ssim, loss_rcka).
_base_ = ['../ssim/ssim_faster-rcnn_r101-to-r50_fpn_2x_coco.py']
model = dict(
    distill_losses=dict(
        loss_rcka=dict(type='RCKALoss', loss_weight=10.0, inter_weight=10.0, patch_size=16,
                       levels=[0, 1, 2, 3])))
