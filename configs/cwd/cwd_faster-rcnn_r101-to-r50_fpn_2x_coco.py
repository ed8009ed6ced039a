# CWD (Shu et al., ICCV 2021): channel-wise spatial softmax KL, tau 1, weight 10, 5 levels
# (MMRazor's settings).
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_cwd=dict(type='CWDLoss', tau=1.0, loss_weight=10.0, levels=[0, 1, 2, 3, 4])))
