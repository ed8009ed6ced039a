# Demo: UniKD, the COCO recipe (configs/unikd/) on 64-channel necks: gated top-down fusion
# of the 5 levels, a 128-d diagonal Gaussian, closed-form KL(teacher || student), weight 1.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', loss_weight=1.0, levels=[0, 1, 2, 3, 4],
                        in_channels=64, teacher_channels=64, num_levels=5,
                        fused_channels=64, embed_dim=128, divergence='gaussian')))
