# A CPU-sized RTMDet student for the synthetic shapes dataset (kd_det/demo/synthetic_coco.py,
# 7 classes): mmdet's RTMDet-tiny recipe -- CSPNeXt, CSPNeXtPAFPN (3 levels, strides 8-32),
# RTMDetSepBNHead, CachedMosaic + CachedMixUp, then a plain pipeline for the last epoch
# (PipelineSwitchHook), EMA of the weights (ExpMomentumEMA) -- shrunk: widen 0.125 (a 32-channel
# neck), 128 px images, 4 epochs, trained from scratch, plain BN (no SyncBN on a CPU).
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

classes = ('circle', 'ring', 'square', 'triangle', 'hexagon', 'star', 'cross')
image_size = (128, 128)
data_root = 'data/kd_det_shapes/'
max_epochs = 4
stage2_num_epochs = 1
norm_cfg = dict(type='BN')

model = dict(
    backbone=dict(widen_factor=0.125, norm_cfg=norm_cfg, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128], out_channels=32, num_csp_blocks=1,
              norm_cfg=norm_cfg),
    bbox_head=dict(num_classes=len(classes), in_channels=32, feat_channels=32,
                   norm_cfg=norm_cfg),
    test_cfg=dict(nms_pre=1000, max_per_img=50))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='CachedMosaic', img_scale=image_size, pad_val=114.0, max_cached_images=8,
         random_pop=False),
    dict(type='RandomResize', scale=(256, 256), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='CachedMixUp', img_scale=image_size, ratio_range=(1.0, 1.0),
         max_cached_images=4, random_pop=False, pad_val=(114, 114, 114), prob=0.5),
    dict(type='PackDetInputs'),
]
train_pipeline_stage2 = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size),
    dict(type='YOLOXHSVRandomAug'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='Pad', size=image_size, pad_val=dict(img=(114, 114, 114))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False, pin_memory=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs, dynamic_intervals=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', eta_min=0.004 * 0.05, begin=max_epochs // 2,
         end=max_epochs, T_max=max_epochs // 2, by_epoch=True, convert_to_iter_based=True),
]
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
    dict(type='PipelineSwitchHook', switch_epoch=max_epochs - stage2_num_epochs,
         switch_pipeline=train_pipeline_stage2),
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)
