# UniKD (Huang et al., ECCV 2024, arXiv 2409.18565), feature part: gated top-down fusion of
# FPN levels P3-P6 (levels 1..4, strides 8-64) into one 128-channel map per network, one
# 128-d diagonal Gaussian per ground-truth box (RoIAlign on the fused map; pooling='image'
# is one per image); closed-form KL(teacher || student), weight 1. The teacher-side fusion
# and predictor are fixed random networks (see kd_det/losses/unikd.py). Channels and strides
# come from the models. ./unikd-whole_* adds the logit part, as the paper does.
# Fusing from P2 (stride 4) at 256 channels, as the demo does on its 192 px images, cost
# 12.5% of a training step at 2 x 512x512 (tools/analysis/benchmark_distill.py, idle CPU:
# c / (a + b) = 1.125), over kd_det's 5% budget; see configs/unikd/README.md.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', loss_weight=1.0, fused_channels=128, embed_dim=128,
                        divergence='gaussian', levels=[1, 2, 3, 4])))
