# UniKD (Huang et al., ECCV 2024, arXiv 2409.18565), feature part: gated top-down fusion of
# the 5 FPN levels into one 256-channel map per network, one 128-d diagonal Gaussian per
# ground-truth box (RoIAlign on the fused map; pooling='image' is one per image);
# closed-form KL(teacher || student), weight 1. The teacher-side fusion and predictor are
# fixed random networks (see kd_det/losses/unikd.py). Channels and strides come from the
# models. ./unikd-whole_* adds the logit part, as the paper does.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', loss_weight=1.0, fused_channels=256, embed_dim=128,
                        divergence='gaussian')))
