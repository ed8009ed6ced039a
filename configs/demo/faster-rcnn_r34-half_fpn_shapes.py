# The demo's teacher: the student's recipe (./faster-rcnn_r18-tiny_fpn_shapes.py) with a
# deeper and twice as wide backbone, ResNet-34 at 1/2 width (stage channels 32/64/128/256),
# the same 64-channel FPN (so both necks compare directly), and a longer schedule (16 epochs).
# The checkpoint shipped in demo/teacher/ was trained with
#   python tools/train.py configs/demo/faster-rcnn_r34-half_fpn_shapes.py
# on the dataset `python -m kd_det.demo.synthetic_coco data/kd_det_shapes` writes.
_base_ = './faster-rcnn_r18-tiny_fpn_shapes.py'
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
