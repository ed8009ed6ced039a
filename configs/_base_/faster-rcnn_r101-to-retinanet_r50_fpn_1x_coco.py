# A two-stage teacher for a one-stage student: Faster R-CNN R-101-FPN (mmdet model zoo, 1x,
# 39.4 box AP) -> RetinaNet R-50-FPN (ImageNet-pretrained backbone, 36.5 alone), MS-COCO,
# 1x schedule, 8 GPUs x 2 images.
# Level pairing by stride: the teacher's FPN gives P2-P6 (strides 4, 8, 16, 32, 64), the
# student's P3-P7 (strides 8, 16, 32, 64, 128). Student levels 0..3 (strides 8-64) pair with
# teacher levels 1..4; student level 4 (stride 128) has no partner, so method configs must
# list `levels=[0, 1, 2, 3]` (student levels).
# Method configs add `model.distill_losses`.
_base_ = './retinanet_r101-to-r50_fpn_1x_coco.py'
model = dict(
    teacher_config='mmdet::faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/faster_rcnn_r101_fpn_1x_coco/faster_rcnn_r101_fpn_1x_coco_20200130-f513f705.pth',
)
