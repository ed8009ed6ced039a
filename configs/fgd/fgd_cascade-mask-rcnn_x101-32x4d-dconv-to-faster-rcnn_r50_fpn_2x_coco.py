# FGD as yzd-v/FGD's fgd_cascade_mask_rcnn_rx101_32x4d_distill_faster_rcnn_r50_fpn_2x_coco:
# Cascade Mask R-CNN X-101-32x4d-FPN with DCN (c3-c5), 1x teacher (47.3) -> Faster R-CNN R-50 2x, the
# Faster R-CNN settings of fgd_faster-rcnn_r101-to-r50_fpn_2x_coco.py (this official config
# has no init_student). The teacher's mask branch is loaded but never run.
_base_ = './fgd_faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    teacher_config='mmdet::dcn/cascade-mask-rcnn_x101-32x4d-dconv-c3-c5_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/dcn/cascade_mask_rcnn_x101_32x4d_fpn_dconv_c3-c5_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_dconv_c3-c5_1x_coco-e75f90c8.pth',
)
