# FGD (Yang et al., CVPR 2022) as yzd-v/FGD's fgd_retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco:
# RetinaNet X-101-64x4d 1x teacher -> RetinaNet R-50 2x student, all five FPN levels (P3-P7),
# temp 0.5, alpha 1e-3, beta 5e-4, gamma 5e-4, lambda 5e-6, SGD lr 0.01, grad clip 35.
# The official config also starts the student's neck and head from the teacher's
# (init_student=True); kd_det does not (README).
_base_ = '../_base_/retinanet_x101-64x4d-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(
        loss_fgd=dict(type='FGDLoss', temp=0.5, alpha_fgd=0.001, beta_fgd=0.0005,
                      gamma_fgd=0.0005, lambda_fgd=0.000005)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
