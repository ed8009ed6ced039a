# RCKA / PCKA (Zhou et al., IJCAI 2024), the official COCO Faster R-CNN setting: FPN levels
# 0..3, 16x16 patches, intra + inter CKA terms with intra_weight = inter_weight = 10 (the
# official code scales the inter term by the intra weight; see kd_det/losses/rcka.py).
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_rcka=dict(type='RCKALoss', loss_weight=10.0, inter_weight=10.0, patch_size=16,
                       levels=[0, 1, 2, 3])))
