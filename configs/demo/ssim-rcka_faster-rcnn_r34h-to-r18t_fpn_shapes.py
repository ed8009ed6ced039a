# Demo: SSIM + RCKA, the COCO recipe (configs/ssim_rcka/) with the demo's tuned settings of
# each: SSIM on the 5 FPN levels (lambda 4, as ./ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py)
# and RCKA on levels 0..3 (16x16 patches, intra + inter, weight 5, centred, as
# ./rcka_faster-rcnn_r34h-to-r18t_fpn_shapes.py); logged separately (loss_ssim, loss_rcka).
_base_ = './ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rcka=dict(type='RCKALoss', loss_weight=5.0, inter_weight=5.0, patch_size=16,
                       centered=True, levels=[0, 1, 2, 3])))
