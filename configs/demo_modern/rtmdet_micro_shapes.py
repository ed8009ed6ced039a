# The RTMDet student's teacher for the demo data: ./rtmdet_nano_shapes.py at twice the width
# (widen 0.25, a 64-channel neck) and full CSP depth in the neck; same data and recipe.
_base_ = './rtmdet_nano_shapes.py'
model = dict(
    backbone=dict(widen_factor=0.25),
    neck=dict(in_channels=[64, 128, 256], out_channels=64, num_csp_blocks=1),
    bbox_head=dict(in_channels=64, feat_channels=64))
