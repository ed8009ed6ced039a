# Demo: RRD, the COCO recipe (configs/rrd/): instance embeddings over ground-truth boxes,
# 128-d heads, each box related to the boxes of *other* images in the memory
# (exclude='image', KL form, tau_s 0.1 / tau_t 0.05); a 4096-entry memory (the demo sees
# ~3000 boxes per epoch, the COCO config keeps the official 16384). Channels, strides and
# the box-to-level mapping (finest_scale) come from the models.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', loss_weight=1.0, mode='instance', embed_dim=128,
                      queue_size=4096)))
