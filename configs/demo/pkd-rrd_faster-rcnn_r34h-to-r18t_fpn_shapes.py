# Demo: PKD on neck levels P2-P5 plus RRD on the box heads' embeddings, a combination of a
# baseline feature method and a seed method: the PKD loss of
# ./pkd_faster-rcnn_r34h-to-r18t_fpn_shapes.py (weight 6) and the RRD loss of
# ./rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py (source='roi_embed', weight 1), each at its
# own tuned setting; chosen on the tune split among SSIM + RRD and PKD + RRD
# (docs/demo/tune_sweep.md).
_base_ = './pkd_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', source='roi_embed', loss_weight=1.0, embed_dim=128,
                      queue_size=4096, num_negatives=16)))
