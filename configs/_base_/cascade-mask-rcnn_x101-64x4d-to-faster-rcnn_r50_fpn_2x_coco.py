# Cascade Mask R-CNN X-101-64x4d-FPN teacher (mmdet model zoo, 20e, 45.6 box AP) -> Faster
# R-CNN R-50-FPN student (ImageNet-pretrained backbone), MS-COCO, 2x schedule, 8 GPUs x 2
# images: the RCKA paper's two-stage pair (Zhou et al., IJCAI 2024; teacher 45.6, student
# 38.4). Both necks are 256-channel P2-P6 FPNs (strides 4-64). The teacher's mask branch is
# built and loaded but never run (distillation uses its FPN features).
# Method configs add `model.distill_losses`.
_base_ = './faster-rcnn_r101-to-r50_fpn_2x_coco.py'
model = dict(
    teacher_config='mmdet::cascade_rcnn/cascade-mask-rcnn_x101-64x4d_fpn_20e_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/cascade_rcnn/cascade_mask_rcnn_x101_64x4d_fpn_20e_coco/cascade_mask_rcnn_x101_64x4d_fpn_20e_coco_20200512_161033-bdb5126a.pth',
)
