# Demo: RRD, the COCO recipe (configs/rrd/) on 64-channel necks: instance embeddings over
# ground-truth boxes, 128-d heads, tau_s 0.1 / tau_t 0.02; a 4096-entry memory (the demo
# sees ~3000 boxes per epoch, the COCO config keeps the official 16384).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', loss_weight=1.0, levels=[0, 1, 2, 3, 4],
                      in_channels=64, teacher_channels=64, num_levels=5,
                      mode='instance', strides=(4, 8, 16, 32, 64), embed_dim=128,
                      queue_size=4096, student_tau=0.1, teacher_tau=0.02)))
