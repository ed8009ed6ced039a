# PKD (Cao et al., NeurIPS 2022) from a transformer-backbone teacher: Mask R-CNN Swin-T
# (p4-w7) FPN, 1x (42.7 box AP) -> Faster R-CNN R-50-FPN (37.4 alone), 1x. PKD standardises
# every channel of both features first, so the different feature magnitudes of a Swin and
# a ResNet FPN do not matter. FPN levels 0..3 (strides 4-32 on both sides), weight 6
# (MMRazor's PKD COCO configs).
# No published number for this pair (see README).
_base_ = '../_base_/mask-rcnn_swin-t-to-faster-rcnn_r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_pkd=dict(type='PKDLoss', loss_weight=6.0, levels=[0, 1, 2, 3])))
