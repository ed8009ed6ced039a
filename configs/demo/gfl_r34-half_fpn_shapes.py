# A GFL teacher for the demo data: ./gfl_r18-tiny_fpn_shapes.py with the demo teacher's
# backbone (ResNet-34 at 1/2 width) and the same 64-channel P3-P7 FPN and head, so CrossKD
# and LD pair it with the GFL student level by level and prior by prior.
_base_ = './gfl_r18-tiny_fpn_shapes.py'
model = dict(
    backbone=dict(depth=34, base_channels=32),
    neck=dict(in_channels=[32, 64, 128, 256]))
