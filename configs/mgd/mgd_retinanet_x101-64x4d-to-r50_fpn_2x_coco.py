# MGD (Yang et al., ECCV 2022): RetinaNet X-101-64x4d 1x teacher (41.0) -> RetinaNet R-50 2x, all
# five FPN levels (P3-P7), alpha 2e-5, lambda 0.65, SGD lr 0.01, grad clip 35.
# This is MMRazor's configs/distill/mmdet/mgd/mgd_fpn_retina_x101_retina_r50_2x_coco.py converted
# to kd_det, key by key (docs/migrating_from_mmrazor.md); MMRazor published 41.0 with it.
# Unlike MMRazor's config, the student's neck and head start from mmdet's initialisation, not
# from the teacher's weights (README).
_base_ = '../_base_/retinanet_x101-64x4d-to-r50_fpn_2x_coco.py'
model = dict(
    distill_losses=dict(loss_mgd=dict(type='MGDLoss', alpha_mgd=0.00002, lambda_mgd=0.65)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
