# Demo baseline: FitNet-style feature mimic (MSE), 5 FPN levels, weight 1.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_mse=dict(type='FeatureMSELoss', loss_weight=1.0, levels=[0, 1, 2, 3, 4])))
