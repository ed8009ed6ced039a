# UniKD whole (Huang et al., ECCV 2024, arXiv 2409.18565): the same distribution constraint
# on the features and on the logits. Feature part: the UniKD loss of
# ./unikd_faster-rcnn_r101-to-r50_fpn_1x_coco.py (gated fusion of the 5 FPN levels, 128-d
# diagonal Gaussian, closed-form KL, weight 1). Logit part: KL(teacher || student) on the
# RoI head's class logits (softmax over 80 classes + background) for the student's sampled
# RoIs, the teacher's RoI head run on the same RoIs; temperature 4 (the temperature of
# UniKD's sampled divergence, `divergence='sampled'`, in kd_det/losses/unikd.py), scaled by
# T^2; weight 1, untuned like the feature part.
_base_ = './unikd_faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=4.0, loss_weight=1.0)))
