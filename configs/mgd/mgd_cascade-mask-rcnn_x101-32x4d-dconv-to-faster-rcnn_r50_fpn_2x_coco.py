# MGD (Yang et al., ECCV 2022) as yzd-v/MGD's cascade_mask_rcnn_rx101_32x4d_distill_faster_rcnn_r50_fpn_2x_coco:
# Cascade Mask R-CNN X-101-32x4d-FPN with DCN (c3-c5), 1x teacher -> Faster R-CNN R-50 2x, FPN
# levels 0..3 (P2-P5), alpha 5e-7, lambda 0.45, SGD lr 0.02, grad clip 35 (no init_student).
# The teacher's mask branch is loaded but never run.
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    teacher_config='mmdet::dcn/cascade-mask-rcnn_x101-32x4d-dconv-c3-c5_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/dcn/cascade_mask_rcnn_x101_32x4d_fpn_dconv_c3-c5_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_dconv_c3-c5_1x_coco-e75f90c8.pth',
    distill_losses=dict(
        loss_mgd=dict(type='MGDLoss', levels=[0, 1, 2, 3], alpha_mgd=0.0000005,
                      lambda_mgd=0.45)))
optim_wrapper = dict(clip_grad=dict(max_norm=35, norm_type=2))
