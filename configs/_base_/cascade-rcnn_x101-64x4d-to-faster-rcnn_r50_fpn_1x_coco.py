# Cascade R-CNN X-101-64x4d-FPN teacher (mmdet model zoo, 1x, 44.7 box AP) -> Faster R-CNN
# R-50-FPN student (ImageNet-pretrained backbone), MS-COCO, 1x schedule, 8 GPUs x 2 images:
# the SSIM paper's two-stage pair (de Rijk et al., NeurIPS 2022). Both necks are 256-channel
# P2-P6 FPNs (strides 4-64), so every level has a partner.
# Method configs add `model.distill_losses`.
_base_ = './faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    teacher_config='mmdet::cascade_rcnn/cascade-rcnn_x101-64x4d_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/cascade_rcnn/cascade_rcnn_x101_64x4d_fpn_1x_coco/cascade_rcnn_x101_64x4d_fpn_1x_coco_20200515_075702-43ce6a30.pth',
)
