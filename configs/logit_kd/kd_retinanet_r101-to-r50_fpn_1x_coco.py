# Logit KD for a dense (one-stage) head: RetinaNet R-101-FPN -> R-50-FPN, 1x. Per-class
# binary KL between sigmoid(teacher / T) and sigmoid(student / T) (RetinaNet's head is
# sigmoid-based: kd_det derives that from the heads) on the class logits of every anchor
# of all 5 levels (strides 8-128 on both sides).
# temperature 1 and weight 1: BCKD (Yang et al., ICCV 2023; its binary classification KD
# on soft sigmoid targets has no temperature and weight 1.0) and CrossKD (Wang et al.,
# CVPR 2024; RetinaNet config: soft-target sigmoid KD loss, weight 1.0). Neither is a plain
# binary KL (both reweight by |p_t - p_s|^beta), so these values are a starting point.
_base_ = '../_base_/retinanet_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='dense_cls', temperature=1.0, loss_weight=1.0,
                     levels=[0, 1, 2, 3, 4])))
