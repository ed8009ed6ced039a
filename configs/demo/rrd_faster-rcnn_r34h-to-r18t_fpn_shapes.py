# Demo: RRD, the COCO recipe (configs/rrd/): instance embeddings over ground-truth boxes,
# 128-d heads, each box related to the boxes of *other* images in the memory
# (exclude='image', KL form, tau_s 0.1 / tau_t 0.05); a 4096-entry memory (the demo sees
# ~3000 boxes per epoch, the COCO config keeps the official 16384). Channels, strides and
# the box-to-level mapping (finest_scale) come from the models. Weight 0.1, chosen on the
# demo's tune split (docs/demo/tune_sweep.md: 14.0 AP at 0.1 vs 7.4 at 1; at 1 its gradient
# on the student's P2/P3 is 7-18x the detector's, tools/analysis/loss_balance.py).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', loss_weight=0.1, mode='instance', embed_dim=128,
                      queue_size=4096)))
