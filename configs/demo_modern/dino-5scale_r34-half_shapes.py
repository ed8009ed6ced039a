# The DINO student's teacher for the demo data, 5-scale like mmdet's DINO Swin-L: a
# ResNet-34 at 1/2 width, all four stages into the ChannelMapper plus one extra level
# (5 levels, strides 4-64); otherwise ./dino-4scale_r18-tiny_shapes.py.
_base_ = './dino-4scale_r18-tiny_shapes.py'
model = dict(
    num_feature_levels=5,
    backbone=dict(depth=34, base_channels=32, out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[32, 64, 128, 256], num_outs=5),
    encoder=dict(layer_cfg=dict(self_attn_cfg=dict(num_levels=5))),
    decoder=dict(layer_cfg=dict(cross_attn_cfg=dict(num_levels=5))))
