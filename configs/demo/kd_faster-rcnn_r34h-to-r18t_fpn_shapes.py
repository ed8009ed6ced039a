# Demo baseline: logit KD, the COCO recipe (configs/logit_kd/): KL(teacher || student) on
# the RoI head's class logits (softmax, 7 classes + background) for the student's sampled
# RoIs, temperature 1, weight 1.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=1.0, loss_weight=1.0)))
