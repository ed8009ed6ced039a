# PKD (Cao et al., NeurIPS 2022): per-channel standardised MSE / 2, FPN levels 0..3,
# weight 6 as in MMRazor's configs.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_pkd=dict(type='PKDLoss', loss_weight=6.0, levels=[0, 1, 2, 3])))
