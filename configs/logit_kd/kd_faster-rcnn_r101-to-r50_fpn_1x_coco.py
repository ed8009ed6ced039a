# Logit KD baseline (Hinton et al. 2015, applied to a two-stage detector as in Chen et al.,
# NeurIPS 2017): KL(teacher || student) between the RoI head's class distributions
# (softmax over 80 classes + background; kd_det derives the activation from the heads) on
# the student's sampled RoIs, the teacher's RoI head evaluated on the same RoIs.
# temperature 1: Chen et al. 2017 found no temperature (T = 1) best for detection, and
#   mdistiller's RoI-logit detection code (DKD) uses T = 1.0.
# loss_weight 1: Chen et al. weigh hard and soft class losses mu = 0.5 each, i.e. soft /
#   hard = 1 with the student's own cross-entropy kept at weight 1.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=1.0, loss_weight=1.0)))
