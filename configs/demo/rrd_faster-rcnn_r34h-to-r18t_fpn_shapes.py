# Demo: RRD, the COCO recipe (configs/rrd/): RRD on the embeddings the two box heads
# classify (source='roi_embed': the input of fc_cls, 256-d on both demo heads) for the
# student's sampled RoIs: every positive RoI and 16 negatives per image, 128-d heads, each
# RoI related to the RoIs of *other* images in the memory (exclude='image', KL form,
# tau_s 0.1 / tau_t 0.05); a 4096-entry memory (the COCO config keeps the official 16384).
# Channels come from the models. Weight: docs/demo/tune_sweep.md.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', source='roi_embed', loss_weight=1.0, embed_dim=128,
                      queue_size=4096, num_negatives=16)))
