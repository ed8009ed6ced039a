# A GFL teacher for the demo data: ./gfl_r18-tiny_fpn_shapes.py with the demo teacher's
# backbone (ResNet-34 at 1/2 width), the same 64-channel P3-P7 FPN and head (so CrossKD and
# LD pair it with the GFL student level by level and prior by prior), and the Faster R-CNN
# teacher's longer schedule (16 epochs). `python tools/demo.py --family gfl` trains it in
# <work dir>/gfl/teacher/ (no GFL teacher is shipped).
_base_ = './gfl_r18-tiny_fpn_shapes.py'
max_epochs = 16
model = dict(
    backbone=dict(depth=34, base_channels=32),
    neck=dict(in_channels=[32, 64, 128, 256]))
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs,
         eta_min_ratio=0.05, convert_to_iter_based=True),
]
default_hooks = dict(
    checkpoint=dict(type='SafeCheckpointHook', interval=max_epochs, max_keep_ckpts=1))
