# Demo: RCKA/PCKA distillation, the COCO recipe (configs/rcka/): FPN levels 0..3, 16x16
# patches, intra + inter terms with the official weights (10, 10).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rcka=dict(type='RCKALoss', loss_weight=10.0, inter_weight=10.0, patch_size=16,
                       levels=[0, 1, 2, 3])))
