# RCKA / PCKA (Zhou et al., IJCAI 2024), the paper's one-stage pair: RetinaNet
# X-101-64x4d-FPN (41.0) -> RetinaNet R-50-FPN (37.4 alone), 2x. The official RetinaNet /
# FCOS setting: FPN levels 0..3 (strides 8-64 on both sides), 16x16 patches, intra term
# only, weight 10.
# Paper (published, not reproduced): 40.3 AP (RCKA + feature mimic 40.7).
_base_ = '../_base_/retinanet_x101-64x4d-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_rcka=dict(type='RCKALoss', loss_weight=10.0, patch_size=16, levels=[0, 1, 2, 3])))
