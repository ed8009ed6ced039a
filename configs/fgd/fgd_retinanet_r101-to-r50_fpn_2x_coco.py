# FGD as yzd-v/FGD's fgd_retina_r101_fpn_2x_distill_retina_r50_fpn_2x_coco: RetinaNet R-101 2x
# teacher (mmdet model zoo, 38.9) -> RetinaNet R-50 2x, the RetinaNet settings of
# fgd_retinanet_x101-64x4d-to-r50_fpn_2x_coco.py.
_base_ = './fgd_retinanet_x101-64x4d-to-r50_fpn_2x_coco.py'
model = dict(
    teacher_config='mmdet::retinanet/retinanet_r101_fpn_2x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_r101_fpn_2x_coco/retinanet_r101_fpn_2x_coco_20200131-5560aee8.pth',
)
