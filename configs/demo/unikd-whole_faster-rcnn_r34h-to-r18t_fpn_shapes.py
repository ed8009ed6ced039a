# Demo: UniKD whole, the COCO recipe (configs/unikd/): the distribution loss of
# ./unikd_faster-rcnn_r34h-to-r18t_fpn_shapes.py plus KL(teacher || student) on the RoI
# head's class logits, at the demo's tuned logit-KD settings, temperature 1, weight 4
# (./kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py, chosen on the tune split:
# docs/demo/tune_sweep.md).
_base_ = './unikd_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=1.0, loss_weight=4.0)))
