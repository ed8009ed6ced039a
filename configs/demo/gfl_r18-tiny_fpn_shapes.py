# A GFL student for the demo data: ./retinanet_r18-tiny_fpn_shapes.py's backbone (ResNet-18
# at 1/4 width) and 64-channel P3-P7 FPN (strides 8-128) with mmdet's GFL head (one anchor
# per location, ATSS assignment, QFL + DFL + GIoU, 17 bins per side) on 2 stacked convs.
# Data, schedule and optimiser are those of ./faster-rcnn_r18-tiny_fpn_shapes.py.
_base_ = './retinanet_r18-tiny_fpn_shapes.py'

model = dict(
    type='GFL',
    bbox_head=dict(
        _delete_=True,
        type='GFLHead',
        num_classes=7,
        in_channels=64,
        stacked_convs=2,
        feat_channels=64,
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=8,
                              scales_per_octave=1, strides=[8, 16, 32, 64, 128]),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_dfl=dict(type='DistributionFocalLoss', loss_weight=0.25),
        reg_max=16,
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        _delete_=True,
        assigner=dict(type='ATSSAssigner', topk=9),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(nms=dict(iou_threshold=0.6)))
