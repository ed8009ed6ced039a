# Demo: RRD plus logit KD, the RRD paper's other recipe (its CIFAR total is CE + RRD,
# optionally + KD): the RRD loss of ./rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py and the
# demo's logit KD on the RoI class logits (./kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py:
# temperature 1, weight 4). On the tune split (docs/demo/tune_sweep.md): 16.5 AP, against
# 14.0 for RRD alone and 16.0 for the logit KD alone (RRD on ground-truth box means then;
# now on RoI embeddings).
_base_ = './rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=1.0, loss_weight=4.0)))
