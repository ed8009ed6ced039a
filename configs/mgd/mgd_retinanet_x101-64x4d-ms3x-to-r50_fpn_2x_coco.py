# MGD as yzd-v/MGD's retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco, whose teacher is the
# multi-scale 3x RetinaNet X-101-64x4d checkpoint: otherwise the settings of
# mgd_retinanet_x101-64x4d-to-r50_fpn_2x_coco.py (alpha 2e-5, lambda 0.65, all five levels).
_base_ = './mgd_retinanet_x101-64x4d-to-r50_fpn_2x_coco.py'
model = dict(
    teacher_config='mmdet::retinanet/retinanet_x101-64x4d_fpn_ms-640-800-3x_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v2.0/retinanet/retinanet_x101_64x4d_fpn_mstrain_3x_coco/retinanet_x101_64x4d_fpn_mstrain_3x_coco_20210719_051838-022c2187.pth',
)
