# UniKD whole with the adaptive features fusion at RoI level: the distribution loss of
# ./unikd-fusion_faster-rcnn_r101-to-r50_fpn_1x_coco.py plus KL(teacher || student) on the
# RoI head's class logits for the student's sampled RoIs, temperature 4, scaled by T^2, as
# ./unikd-whole_faster-rcnn_r101-to-r50_fpn_1x_coco.py. Weights: configs/unikd/README.md.
_base_ = './unikd-fusion_faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=4.0, loss_weight=1.0)))
