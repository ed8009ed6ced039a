# Demo baseline: logit KD, the COCO recipe (configs/logit_kd/): KL(teacher || student) on
# the RoI head's class logits (softmax, 7 classes + background) for the student's sampled
# RoIs, temperature 1 (kept: 14.4 AP on the tune split vs 13.8 at T 4); weight 4, chosen
# on the tune split (docs/demo/tune_sweep.md: 16.0 AP vs 14.4 at weight 1).
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=1.0, loss_weight=4.0)))
