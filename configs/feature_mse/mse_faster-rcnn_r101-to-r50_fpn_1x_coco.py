# FitNet-style feature mimic: MSE between student and teacher FPN features, 5 levels.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_mse=dict(type='FeatureMSELoss', loss_weight=1.0, levels=[0, 1, 2, 3, 4])))
