# UniKD (Huang et al., ECCV 2024, arXiv 2409.18565), feature part: gated top-down fusion of
# the 5 FPN levels into one 256-channel map per network, pooled to a 128-d diagonal Gaussian;
# closed-form KL(teacher || student), weight 1 (untuned). The teacher-side fusion and
# predictor are fixed random networks (see kd_det/losses/unikd.py).
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', loss_weight=1.0, levels=[0, 1, 2, 3, 4],
                        in_channels=256, teacher_channels=256, num_levels=5,
                        fused_channels=256, embed_dim=128, divergence='gaussian')))
