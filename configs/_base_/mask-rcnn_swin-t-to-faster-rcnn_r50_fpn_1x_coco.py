# A transformer-backbone teacher: Mask R-CNN Swin-T (p4-w7) FPN (mmdet model zoo, 1x, 42.7
# box AP) -> Faster R-CNN R-50-FPN student (ImageNet-pretrained backbone), MS-COCO, 1x
# schedule (the student's SGD recipe), 8 GPUs x 2 images. Both necks are 256-channel P2-P6
# FPNs (strides 4-64) and both preprocessors use the same RGB ImageNet mean/std.
# Method configs add `model.distill_losses`.
_base_ = './faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    teacher_config='mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/swin/mask_rcnn_swin-t-p4-w7_fpn_1x_coco/mask_rcnn_swin-t-p4-w7_fpn_1x_coco_20210902_120937-9d6b7cfa.pth',
)
