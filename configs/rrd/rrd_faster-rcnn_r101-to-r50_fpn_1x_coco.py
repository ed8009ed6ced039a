# RRD (Giakoumoglou & Stathaki, arXiv 2407.12073) on the embeddings the two box heads
# classify (source='roi_embed': the 1024-d input of fc_cls, the detector analogue of the
# paper's pooled penultimate features) for the student's sampled RoIs: every positive RoI
# and 16 negatives per image; linear heads to 128-d, FIFO memory of 16384 teacher
# embeddings (all GPUs); each RoI related to the RoIs of other images in the memory
# (exclude='image'), KL form, tau_s 0.1, tau_t 0.05. Channels come from the models.
# Weight: set by gradient share at init on a COCO-sized batch (configs/rrd/README.md).
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', source='roi_embed', loss_weight=0.3, embed_dim=128,
                      queue_size=16384, num_negatives=16)))
