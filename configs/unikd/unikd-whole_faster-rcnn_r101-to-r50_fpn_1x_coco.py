# UniKD whole (Huang et al., ECCV 2024, arXiv 2409.18565): the distribution loss of
# ./unikd_faster-rcnn_r101-to-r50_fpn_1x_coco.py plus KL(teacher || student) on the RoI
# head's class logits (softmax over 80 classes + background) for the student's sampled
# RoIs, the teacher's RoI head run on the same RoIs, temperature 4, scaled by T^2.
# Weights: configs/unikd/README.md.
_base_ = './unikd_faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=4.0, loss_weight=1.0)))
