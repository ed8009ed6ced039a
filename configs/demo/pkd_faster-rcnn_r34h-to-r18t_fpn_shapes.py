# Demo baseline: PKD, FPN levels 0..3, weight 6 (MMRazor's COCO setting).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_pkd=dict(type='PKDLoss', loss_weight=6.0, levels=[0, 1, 2, 3])))
