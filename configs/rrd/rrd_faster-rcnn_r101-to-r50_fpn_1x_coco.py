# RRD (Giakoumoglou & Stathaki, arXiv 2407.12073) adapted to detection: one embedding per
# ground-truth box (RoIAlign 7x7 on the FPN level the student's RoI extractor would choose,
# then mean), linear heads to 128-d, FIFO memory of 16384 teacher embeddings (all GPUs).
# Each box is related to the boxes of other images in the memory (exclude='image'; the
# official code, exclude='none', makes the target one-hot on the box itself), KL form,
# tau_s 0.1, tau_t 0.05, weight 1. Channels, strides and finest_scale come from the models.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', loss_weight=1.0, mode='instance', embed_dim=128,
                      queue_size=16384)))
