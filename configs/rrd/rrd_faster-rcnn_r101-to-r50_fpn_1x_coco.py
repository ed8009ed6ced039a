# RRD (Giakoumoglou & Stathaki, arXiv 2407.12073) adapted to detection: one embedding per
# ground-truth box (RoIAlign 7x7 on the FPN level chosen by box size, then mean), linear
# heads to 128-d, FIFO memory of 16384 teacher embeddings (all GPUs), tau_s 0.1, tau_t 0.02,
# weight 1 (the paper's beta). mode='image' relates per-image embeddings instead.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', loss_weight=1.0, levels=[0, 1, 2, 3, 4],
                      in_channels=256, teacher_channels=256, num_levels=5,
                      mode='instance', strides=(4, 8, 16, 32, 64), embed_dim=128,
                      queue_size=16384, student_tau=0.1, teacher_tau=0.02)))
