# Demo: FGD on FPN levels 0..3 (P2-P5) with the official Faster R-CNN settings (temp 0.5,
# alpha 5e-5, beta 2.5e-5, gamma 5e-5, lambda 5e-7; configs/fgd/). The demo's 64-channel
# FPNs give one pair of 64-channel GcBlocks per level. loss_weight scales all four terms:
# 5, chosen on the tune split against 1 (26.3 vs 19.0 AP, baseline 13.4; 5 puts about PKD's
# gradient share on P2 at init; docs/demo/tune_sweep.md, fifth sweep).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_fgd=dict(type='FGDLoss', levels=[0, 1, 2, 3], temp=0.5, alpha_fgd=0.00005,
                      beta_fgd=0.000025, gamma_fgd=0.00005, lambda_fgd=0.0000005,
                      loss_weight=5.0)))
