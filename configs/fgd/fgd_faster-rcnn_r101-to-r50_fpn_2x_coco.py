# FGD (Yang et al., CVPR 2022) as yzd-v/FGD's fgd_faster_rcnn_r101_fpn_2x_distill_faster_rcnn_r50_fpn_2x_coco:
# Faster R-CNN R-101 2x -> R-50 2x, FPN levels 0..3 (P2-P5, the official fpn_convs 0-3),
# temp 0.5, alpha 5e-5, beta 2.5e-5, gamma 5e-5, lambda 5e-7, SGD lr 0.02, grad clip 35.
# The official config also starts the student's neck and heads from the teacher's
# (init_student=True); kd_det does not (README).
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_fgd=dict(type='FGDLoss', levels=[0, 1, 2, 3], temp=0.5, alpha_fgd=0.00005,
                      beta_fgd=0.000025, gamma_fgd=0.00005, lambda_fgd=0.0000005)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
