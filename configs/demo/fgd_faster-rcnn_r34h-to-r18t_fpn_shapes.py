# Demo: FGD on FPN levels 0..3 (P2-P5) with the official Faster R-CNN settings (temp 0.5,
# alpha 5e-5, beta 2.5e-5, gamma 5e-5, lambda 5e-7; configs/fgd/). The demo's 64-channel
# FPNs give one pair of 64-channel GcBlocks per level. loss_weight scales all four terms:
# to be chosen on the tune split (docs/demo.md).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_fgd=dict(type='FGDLoss', levels=[0, 1, 2, 3], temp=0.5, alpha_fgd=0.00005,
                      beta_fgd=0.000025, gamma_fgd=0.00005, lambda_fgd=0.0000005,
                      loss_weight=1.0)))
