# A one-stage teacher for the demo data: ./retinanet_r18-tiny_fpn_shapes.py with the demo
# teacher's backbone (ResNet-34 at 1/2 width) and the same 64-channel P3-P7 FPN and head, so
# its dense-head outputs pair with the RetinaNet student's prior by prior.
_base_ = './retinanet_r18-tiny_fpn_shapes.py'
model = dict(
    backbone=dict(depth=34, base_channels=32),
    neck=dict(in_channels=[32, 64, 128, 256]))
