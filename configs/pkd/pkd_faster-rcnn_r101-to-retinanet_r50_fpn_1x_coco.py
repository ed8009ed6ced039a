# PKD (Cao et al., NeurIPS 2022) across detector families: Faster R-CNN R-101-FPN (two-stage,
# P2-P6) -> RetinaNet R-50-FPN (one-stage, P3-P7), 1x. Levels are the STUDENT's: 0..3 =
# strides 8, 16, 32, 64, which kd_det pairs by stride with teacher levels 1..4; the
# student's stride-128 level has no teacher partner and is left out. Weight 6 (MMRazor's
# PKD COCO configs).
# No published number for this pair (see README: the closest published heterogeneous
# results are MMRazor's PKD ones).
_base_ = '../_base_/faster-rcnn_r101-to-retinanet_r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_pkd=dict(type='PKDLoss', loss_weight=6.0, levels=[0, 1, 2, 3])))
