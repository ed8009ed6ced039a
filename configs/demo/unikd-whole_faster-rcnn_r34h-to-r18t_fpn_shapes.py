# Demo: UniKD whole, the COCO recipe (configs/unikd/): the UniKD feature loss of
# ./unikd_faster-rcnn_r34h-to-r18t_fpn_shapes.py plus KL(teacher || student) on the RoI
# head's class logits with UniKD's temperature 4, weight 1.
_base_ = './unikd_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=4.0, loss_weight=1.0)))
