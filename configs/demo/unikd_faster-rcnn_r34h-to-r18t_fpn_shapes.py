# Demo: UniKD's feature part, the COCO recipe (configs/unikd/) on 64-channel necks: gated
# top-down fusion of the 5 levels, one 128-d diagonal Gaussian per ground-truth box
# (pooling='instance'), closed-form KL(teacher || student) per dimension, weight 1.
# Channels and strides come from the models. ./unikd-whole_* adds the logit part.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', loss_weight=1.0, fused_channels=64, embed_dim=128,
                        divergence='gaussian')))
