# A CPU-sized DINO student for the synthetic shapes dataset (7 classes): mmdet's
# DINO-4scale R-50 recipe (ChannelMapper, 4 levels at strides 8-64, deformable encoder and
# decoder, contrastive denoising, two-stage queries) shrunk: a ResNet-18 at 1/4 width from
# scratch, 1 encoder and 2 decoder layers, 30 queries, 128 px images. The embeddings stay
# 256-d: mmdet's DINO decoder encodes reference points with a fixed 128 features per
# coordinate, which fits 256-d queries only.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['kd_det'], allow_failed_imports=False)

classes = ('circle', 'ring', 'square', 'triangle', 'hexagon', 'star', 'cross')
image_size = (128, 128)
data_root = 'data/kd_det_shapes/'
max_epochs = 4
embed = 256

model = dict(
    num_queries=30,
    backbone=dict(depth=18, base_channels=16, frozen_stages=-1,
                  norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False,
                  init_cfg=None),
    neck=dict(in_channels=[32, 64, 128], out_channels=embed),
    encoder=dict(num_layers=1, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=embed, num_heads=8),
        ffn_cfg=dict(embed_dims=embed, feedforward_channels=256))),
    decoder=dict(num_layers=2, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=embed, num_heads=8),
        cross_attn_cfg=dict(embed_dims=embed, num_heads=8),
        ffn_cfg=dict(embed_dims=embed, feedforward_channels=256))),
    positional_encoding=dict(num_feats=embed // 2),
    bbox_head=dict(num_classes=len(classes), embed_dims=embed),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
    test_cfg=dict(max_per_img=30))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
metainfo = dict(classes=classes)
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
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

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=4e-4), paramwise_cfg=dict(custom_keys=dict()))
param_scheduler = [dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
                        milestones=[max_epochs - 1], gamma=0.1)]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(type='SafeCheckpointHook', interval=1, max_keep_ckpts=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)
