# Demo: MGD on FPN levels 0..3 (P2-P5) with the official Faster R-CNN settings (alpha 5e-7,
# lambda 0.45; configs/mgd/): one 64-channel generation block per level. loss_weight scales
# the loss: 85, chosen on the tune split against 1 (21.1 vs 15.3 AP, baseline 13.4; 85 puts
# about PKD's gradient share on P2 at init; docs/demo/tune_sweep.md, fifth sweep).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_mgd=dict(type='MGDLoss', levels=[0, 1, 2, 3], alpha_mgd=0.0000005,
                      lambda_mgd=0.45, loss_weight=85.0)))
