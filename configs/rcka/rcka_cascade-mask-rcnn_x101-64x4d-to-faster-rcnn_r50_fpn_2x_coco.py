# RCKA / PCKA (Zhou et al., IJCAI 2024), the paper's two-stage pair: Cascade Mask R-CNN
# X-101-64x4d-FPN (45.6) -> Faster R-CNN R-50-FPN (38.4 alone), 2x. The official COCO
# Faster R-CNN setting: FPN levels 0..3 (strides 4-32 on both sides), 16x16 patches,
# intra + inter CKA with intra_weight = inter_weight = 10 (the official code scales the
# inter term by the intra weight; see kd_det/losses/rcka.py).
# Paper (published, not reproduced): 41.4 AP (RCKA + feature mimic 42.4).
_base_ = '../_base_/cascade-mask-rcnn_x101-64x4d-to-faster-rcnn_r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_rcka=dict(type='RCKALoss', loss_weight=10.0, inter_weight=10.0, patch_size=16,
                       levels=[0, 1, 2, 3])))
