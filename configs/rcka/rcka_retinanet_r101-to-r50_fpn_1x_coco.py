# RCKA / PCKA on RetinaNet, the official single-stage setting: FPN levels 0..3, intra term
# only, weight 10.
_base_ = '../_base_/retinanet_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_rcka=dict(type='RCKALoss', loss_weight=10.0, patch_size=16, levels=[0, 1, 2, 3])))
