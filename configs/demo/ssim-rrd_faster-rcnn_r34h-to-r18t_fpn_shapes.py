# Demo: seed methods only, SSIM on the neck levels plus RRD on the box heads' embeddings:
# the SSIM loss of ./ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py (lambda 4, P2-P6) and the
# RRD loss of ./rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py (source='roi_embed', weight 1),
# each at its own tuned setting. Chosen on the tune split: the best seed-only combination
# measured there (29.3 AP, against 25.1 for SSIM alone, 25.1 for RRD alone, 24.7 for
# SSIM + RCKA; docs/demo/tune_sweep.md, third sweep, row "ssim (lambda 4) + rrd").
_base_ = './ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_rrd=dict(type='RRDLoss', source='roi_embed', loss_weight=1.0, embed_dim=128,
                      queue_size=4096, num_negatives=16)))
