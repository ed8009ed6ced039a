# RetinaNet X-101-64x4d-FPN teacher (mmdet model zoo, 1x, 41.0 box AP) -> RetinaNet R-50-FPN
# student (ImageNet-pretrained backbone, 37.4 alone at 2x), MS-COCO, 2x schedule, 8 GPUs x 2
# images: the RCKA paper's one-stage pair (Zhou et al., IJCAI 2024; teacher 41.0, student
# 37.4). Both necks are 256-channel P3-P7 FPNs (strides 8-128).
# Method configs add `model.distill_losses`.
_base_ = './retinanet_r101-to-r50_fpn_1x_coco.py'
model = dict(
    teacher_config='mmdet::retinanet/retinanet_x101-64x4d_fpn_1x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_x101_64x4d_fpn_1x_coco/retinanet_x101_64x4d_fpn_1x_coco_20200130-366f5af1.pth',
)
# The 2x schedule of mmdet::retinanet/retinanet_r50_fpn_2x_coco.py (the student's own 2x
# recipe): 24 epochs, steps at 16 and 22.
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[16, 22],
         gamma=0.1)
]
