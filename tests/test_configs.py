"""Every config under configs/ loads (its mmdet:: bases resolve) and builds its model.

COCO configs are checked against mmdet's own model-zoo metafiles (an independent record of
which checkpoint belongs to which config) and their distillation levels against the level
strides read off the student and teacher configs. Models are built on torch's meta device
(shapes, no memory, no initialisation): the full-size X-101 and Swin teachers would take
gigabytes and minutes, and these tests are about wiring. The teacher "checkpoint" is the
meta-device state dict of the teacher config's model, handed to kd_det's loading in place of
a download, so keys and shapes are still checked as for a real file.
"""
import copy
import functools
import glob
import os.path as osp
from unittest import mock

import mmdet
import pytest
import torch
import yaml
from mmengine.config import Config
from mmdet.registry import MODELS

from testing_utils import REPO
from kd_det.checkpoint import CheckpointError
from kd_det.models import load_config

CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))
RUNNABLE = [c for c in CONFIGS if '_base_' not in c.split(osp.sep)]
MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')

# Configs that must exist (relative to configs/): the ones the docs promise.
REQUIRED = [
    # the seed papers' own teacher/student pairs, and pairs across detector families
    'ssim/ssim_cascade-rcnn_x101-64x4d-to-faster-rcnn_r50_fpn_1x_coco.py',
    'rcka/rcka_cascade-mask-rcnn_x101-64x4d-to-faster-rcnn_r50_fpn_2x_coco.py',
    'rcka/rcka_retinanet_x101-64x4d-to-r50_fpn_2x_coco.py',
    'pkd/pkd_faster-rcnn_r101-to-retinanet_r50_fpn_1x_coco.py',
    'pkd/pkd_mask-rcnn_swin-t-to-faster-rcnn_r50_fpn_1x_coco.py',
    # distillation of what the teacher predicts (RoI and dense logits), and its demo configs
    'unikd/unikd-whole_faster-rcnn_r101-to-r50_fpn_1x_coco.py',
    'logit_kd/kd_faster-rcnn_r101-to-r50_fpn_1x_coco.py',
    'logit_kd/kd_faster-rcnn_r101-to-r50_fpn_2x_coco.py',
    'logit_kd/kd_retinanet_r101-to-r50_fpn_1x_coco.py',
    'ssim_kd/ssim-kd_faster-rcnn_r101-to-r50_fpn_1x_coco.py',
    'demo/kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
    'demo/unikd-whole_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
    'demo/ssim-rcka_faster-rcnn_r34h-to-r18t_fpn_shapes.py',
    # issue 24: modern students (RTMDet with EMA and a pipeline switch, DINO)
    'rtmdet/cwd-kd_rtmdet_x-to-s_300e_coco.py',
    'rtmdet/cwd-kd_rtmdet_x-to-tiny_300e_coco.py',
    'rtmdet/cwd-kd_rtmdet_l-to-s_300e_coco.py',
    'dino/pkd_dino-5scale_swin-l-to-4scale_r50_12e_coco.py',
    'dino/pkd_dino-4scale_r50-to-faster-rcnn_r50_fpn_1x_coco.py',
    'demo_modern/cwd-kd_rtmdet_micro-to-nano_shapes.py',
    'demo_modern/pkd_dino-5scale-to-4scale_shapes.py',
    # issue 31: CrossKD's and LD's published pairs
    'crosskd/crosskd_gfl_r101-ms-2x-to-r50_fpn_1x_coco.py',
    'crosskd/crosskd_retinanet_r101-to-r50_fpn_2x_coco.py',
    'crosskd/crosskd_atss_r101-to-r50_fpn_1x_coco.py',
    'crosskd/crosskd_fcos_r101-ms-2x-to-r50_caffe_fpn_gn-head_ms-640-800-2x_coco.py',
    'ld/ld_gfl_r101-ms-2x-to-r18_fpn_1x_coco.py',
    'ld/ld_gfl_r101-ms-2x-to-r34_fpn_1x_coco.py',
    'ld/ld_gfl_r101-ms-2x-to-r50_fpn_1x_coco.py',
]
# Hooks a distillation config may keep from its student's mmdet recipe (RTMDet's).
RECIPE_HOOKS = ('EMAHook', 'PipelineSwitchHook')
# Distillation sources that have no feature levels (one tensor per sampled RoI).
ROI_SOURCES = ('roi_cls', 'roi_reg', 'roi_embed', 'roi_levels')


def _is_demo(path: str) -> bool:
    return path.replace(osp.sep, '/').split('configs/')[-1].split('/')[0] in ('demo',
                                                                            'demo_modern')


@functools.lru_cache(maxsize=None)
def model_zoo_weights() -> dict:
    """{config path under mmdet's configs/: set of checkpoint URLs} from every metafile.yml."""
    weights = {}
    for path in glob.glob(osp.join(MMDET_CONFIGS, '*', 'metafile.yml')):
        with open(path) as f:
            meta = yaml.safe_load(f)
        models = meta.get('Models', []) if isinstance(meta, dict) else []
        for entry in models or []:
            config, url = entry.get('Config'), entry.get('Weights')
            if config and url:
                key = config.split('configs/', 1)[-1]
                urls = [url] if isinstance(url, str) else url  # a few list several
                weights.setdefault(key, set()).update(urls)
    return weights


@functools.lru_cache(maxsize=None)
def _parsed(path: str) -> Config:
    return Config.fromfile(path)


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``, parsed once per module (each test gets its own copy)."""
    return copy.deepcopy(_parsed(path))


@functools.lru_cache(maxsize=None)
def _loaded(path: str) -> Config:
    return load_config(path)


def read_model_config(path: str) -> Config:
    """kd_det's ``load_config(path)`` (package paths too), parsed once per module: mmengine
    reads every metafile of mmdet to resolve one ``mmdet::`` path (~0.1 s each time)."""
    return copy.deepcopy(_loaded(path))


@pytest.fixture(autouse=True)
def teachers_parsed_once(monkeypatch):
    """The distiller reads its teacher config through the same parse-once copy."""
    monkeypatch.setattr('kd_det.models.teacher.load_config', read_model_config)


def level_strides(model_cfg):
    """Strides of a detector's neck levels, from its RPN/dense head's anchor generator (or
    an anchor-free head's own ``strides``), or for a DETR's ChannelMapper from the
    backbone's out_indices (stage i: stride 4 * 2^i, for ResNet and Swin alike) and one
    halving per extra level."""
    for head in ('rpn_head', 'bbox_head'):
        head_cfg = model_cfg.get(head)
        if not isinstance(head_cfg, dict):
            continue
        generator = head_cfg.get('anchor_generator') or head_cfg.get('prior_generator') \
            or head_cfg  # anchor-free heads (FCOS) take their strides themselves
        if generator and 'strides' in generator:
            return [s if isinstance(s, int) else s[0] for s in generator['strides']]
    neck = model_cfg.get('neck')
    if isinstance(neck, dict) and neck.get('type') == 'ChannelMapper':
        strides = [4 * 2**i for i in model_cfg.backbone.out_indices]
        for _ in range(neck.get('num_outs', len(strides)) - len(strides)):
            strides.append(strides[-1] * 2)
        return strides
    return None


def test_there_are_configs():
    names = {osp.relpath(c, osp.join(REPO, 'configs')).replace(osp.sep, '/') for c in RUNNABLE}
    for method in ('ssim', 'rcka', 'feature_mse', 'pkd'):
        for sched in ('1x', '2x'):
            assert any(n.startswith(method + '/') and 'faster-rcnn_r101-to-r50' in n
                       and sched in n for n in names), (method, sched)
    assert any('retinanet' in n and n.startswith('ssim/') for n in names)
    assert any('retinanet' in n and n.startswith('rcka/') for n in names)
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, missing
    for folder in {n.split('/')[0] for n in REQUIRED} - {'demo'}:
        assert osp.isfile(osp.join(REPO, 'configs', folder, 'README.md')), folder


def test_model_zoo_metafiles_are_readable():
    """The reference the URL check relies on: mmdet's metafiles, with the pairs' teachers."""
    weights = model_zoo_weights()
    assert len(weights) > 100, MMDET_CONFIGS
    assert 'faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py' in weights


def cpu_linspace(*args, **kwargs):
    """``torch.linspace`` on the CPU: Swin reads its drop-path rates with ``.item()`` while
    it is built, which a meta tensor cannot answer."""
    kwargs.setdefault('device', 'cpu')
    return LINSPACE(*args, **kwargs)


LINSPACE = torch.linspace


def build_on_meta(model_cfg):
    """``MODELS.build(model_cfg)`` on the meta device; a distiller's teacher checkpoint is
    read as the meta-device state dict of its teacher config's model (no file, no download).
    """
    def teacher_state(filename, what='checkpoint'):
        assert filename == model_cfg.teacher_ckpt, filename
        return MODELS.build(read_model_config(model_cfg.teacher_config).model).state_dict(), {}
    with mock.patch('kd_det.models.teacher.read_checkpoint', teacher_state):
        try:
            with torch.device('meta'), mock.patch.object(torch, 'linspace', cpu_linspace):
                return MODELS.build(model_cfg)  # the distiller builds from a copy
        except ValueError as err:
            if 'probe forward failed' not in str(err):
                raise
        # DETR necks have no prior generator: their strides are measured by a probe
        # forward, which needs real tensors, so these build on the CPU
        return MODELS.build(model_cfg)


def test_meta_build_checks_the_teacher_checkpoint_against_its_config():
    """The stand-in checkpoint still goes through kd_det's key and shape checks."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'demo',
                                   'kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py')).model
    with mock.patch('kd_det.models.teacher.read_checkpoint',
                    lambda *args: ({'backbone.conv1.weight': torch.zeros(1, device='meta')}, {})):
        with torch.device('meta'), pytest.raises(CheckpointError, match='does not fit'):
            MODELS.build(cfg)
    model = build_on_meta(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert all(p.is_meta for p in model.teacher.parameters())


@pytest.mark.parametrize('path', RUNNABLE, ids=lambda p: osp.relpath(p, REPO))
def test_config_levels_have_teacher_partners(path):
    """Every level a feature/dense loss lists (student levels) has a teacher level of the
    same stride, read off the two model configs (independently of the distiller)."""
    cfg = read_config(path)
    model_cfg = cfg.model
    if model_cfg.type != 'FeatureDistillDetector':
        pytest.skip('not a distillation config')
    teacher = read_model_config(model_cfg.teacher_config).model
    s_strides, t_strides = level_strides(model_cfg.student), level_strides(teacher)
    assert s_strides and t_strides, (s_strides, t_strides)
    pairs = model_cfg.get('level_pairs')
    for name, loss in model_cfg.distill_losses.items():
        source = loss.get('source', model_cfg.get('feature_source', 'neck'))
        if source in ROI_SOURCES:
            assert 'levels' not in loss, f'{name}: RoI sources have no levels'
            continue
        if source == 'taps':  # tap i pairs with tap i
            taps = model_cfg.taps
            assert len(taps.student) == len(taps.teacher), (name, taps)
            assert all(0 <= lvl < len(taps.student) for lvl in loss.get('levels', [])), name
            continue
        levels = loss.get('levels', list(range(len(s_strides))))
        for lvl in levels:
            assert 0 <= lvl < len(s_strides), (name, lvl)
            if pairs is not None:
                assert lvl in {s for s, _ in pairs}, (name, lvl, pairs)
            else:
                assert s_strides[lvl] in t_strides, (
                    f'{name}: student level {lvl} (stride {s_strides[lvl]}) has no teacher '
                    f'level of that stride (teacher strides {t_strides})')


@pytest.mark.parametrize('path', RUNNABLE, ids=lambda p: osp.relpath(p, REPO))
def test_config_loads_and_builds(path):
    cfg = read_config(path)
    assert cfg.custom_imports == dict(imports=['kd_det'], allow_failed_imports=False)
    model_cfg = cfg.model
    if model_cfg.type == 'FeatureDistillDetector':
        url = model_cfg.teacher_ckpt
        if not _is_demo(path):
            # The teacher checkpoint is the one mmdet's model zoo lists for that config.
            assert url.startswith('https://download.openmmlab.com/mmdetection/'), url
            assert model_cfg.teacher_config.startswith('mmdet::'), model_cfg.teacher_config
            key = model_cfg.teacher_config[len('mmdet::'):]
            listed = model_zoo_weights().get(key, set())
            assert url in listed, (
                f'{url} is not a checkpoint mmdet\'s metafile lists for {key}: {listed}')
        assert cfg.custom_hooks
        hooks = [hook.type for hook in cfg.custom_hooks]
        assert 'TeacherCheckHook' in hooks, hooks
        assert set(hooks) <= {'TeacherCheckHook', *RECIPE_HOOKS}, hooks
    model = build_on_meta(model_cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    if model_cfg.type == 'FeatureDistillDetector':
        assert set(model.distill_losses) == set(model_cfg.distill_losses)


def _student_recipe(path):
    """The student's own recipe: the first config up a distillation config's ``_base_``
    chain that is not itself a distillation config (l-to-s inherits x-to-s, which names
    mmdet's RTMDet-s)."""
    with open(path) as f:
        first = next(line for line in f if line.startswith('_base_'))
    name = first.split('=', 1)[1].strip().strip('\'"')
    base = name if '::' in name else osp.join(osp.dirname(path), name)
    cfg = read_model_config(base)
    if cfg.model.type == 'FeatureDistillDetector':
        return _student_recipe(base)
    return cfg


def _unscoped(cfg):
    """A config value without the ``_scope_`` keys mmengine adds to package-path bases."""
    if isinstance(cfg, dict):
        return {k: _unscoped(v) for k, v in cfg.items() if k != '_scope_'}
    if isinstance(cfg, (list, tuple)):
        return [_unscoped(v) for v in cfg]
    return cfg


RECIPE_CONFIGS = [c for c in RUNNABLE if osp.basename(osp.dirname(c)) in ('rtmdet', 'demo_modern')
                  and 'rtmdet' in osp.basename(c) and not osp.basename(c).startswith('rtmdet')]


@pytest.mark.parametrize('path', RECIPE_CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_rtmdet_configs_keep_the_students_recipe_hooks(path):
    """EMA and the pipeline switch as the student's own RTMDet recipe has them."""
    cfg, recipe = Config.fromfile(path), _student_recipe(path)
    ours = {h.type: _unscoped(h) for h in cfg.custom_hooks}
    theirs = {h.type: _unscoped(h) for h in recipe.custom_hooks}
    assert set(RECIPE_HOOKS) <= set(theirs) and set(RECIPE_HOOKS) <= set(ours)
    assert ours['EMAHook'] == theirs['EMAHook']
    assert ours['PipelineSwitchHook'] == theirs['PipelineSwitchHook']
    assert _unscoped(cfg.train_dataloader.dataset.pipeline) == \
        _unscoped(recipe.train_dataloader.dataset.pipeline)
    # distillation stops where the strong augmentation stops, as MMYOLO's recipe
    switch = theirs['PipelineSwitchHook']['switch_epoch']
    for name, loss in cfg.model.distill_losses.items():
        assert loss.get('stop_epoch') == switch, (name, loss.get('stop_epoch'), switch)


# MMYOLO's RTMDet distillation recipe, transcribed from open-mmlab/mmyolo
# configs/rtmdet/distillation/kd_{student}_rtmdet_{teacher}_neck_300e_coco.py (commit
# 281f7727364068194075be06da378318f3ca79b3; docs: /work/shared/docs/methods.md, "MMYOLO's
# RTMDet distillation recipe"): {(student, teacher): (ConvModuleConnector in_channel,
# out_channel = NormConnector in_channels)}. Recorders neck.out_layers.{0,1,2}.conv, mmdet's
# neck.out_convs.{0,1,2}.conv; norm BN(affine=False, track_running_stats=False) on both
# sides, no activation, no bias; ChannelWiseDivergence tau 1, loss_weight 1 per level;
# stopped at epoch 280; EMAHook ExpMomentumEMA momentum 0.0002 update_buffers=True;
# PipelineSwitchHook at max_epochs - num_epochs_stage2 = 300 - 20.
MMYOLO_RTMDET = {('tiny', 's'): (96, 128), ('s', 'm'): (128, 192), ('m', 'l'): (192, 256),
                 ('l', 'x'): (256, 320)}
MMYOLO_TAPS = ['neck.out_convs.0.conv', 'neck.out_convs.1.conv', 'neck.out_convs.2.conv']


@pytest.mark.parametrize('pair', sorted(MMYOLO_RTMDET), ids='-'.join)
def test_rtmdet_recipe_configs_are_mmyolos(pair):
    """The built model and the hooks of configs/rtmdet/cwd_rtmdet_{teacher}-to-{student}
    are MMYOLO's recipe for that pair, on mmdet's RTMDet configs and checkpoints."""
    from torch import nn
    from kd_det.losses import CWDLoss
    student, teacher = pair
    s_width, t_width = MMYOLO_RTMDET[pair]
    path = osp.join(REPO, 'configs', 'rtmdet', f'cwd_rtmdet_{teacher}-to-{student}_300e_coco.py')
    cfg = read_config(path)
    assert cfg.model.teacher_config == f'mmdet::rtmdet/rtmdet_{teacher}_8xb32-300e_coco.py'
    mmdet_student = read_model_config(f'mmdet::rtmdet/rtmdet_{student}_8xb32-300e_coco.py')
    assert _unscoped(cfg.model.student) == _unscoped(mmdet_student.model)
    model = build_on_meta(cfg.model)
    for side, net in (('student', model.student), ('teacher', model.teacher)):
        assert model.taps.paths[side] == MMYOLO_TAPS
        for tap in MMYOLO_TAPS:  # the raw conv of a ConvModule that normalises and activates
            conv_module = net.get_submodule(tap.rsplit('.', 1)[0])
            assert type(net.get_submodule(tap)) is nn.Conv2d, tap
            assert conv_module.with_norm and conv_module.with_activation, tap
    assert model.taps.widths('student') == [s_width] * 3
    assert model.taps.widths('teacher') == [t_width] * 3
    assert len(model.connectors) == 3
    for conn in model.connectors:
        assert (conn.conv.in_channels, conn.conv.out_channels) == (s_width, t_width)
        assert conn.conv.kernel_size == (1, 1) and conn.conv.bias is None
        assert type(conn.norm) is nn.BatchNorm2d and not conn.with_activation
        assert not conn.norm.affine and not conn.norm.track_running_stats
    assert len(model.teacher_connectors.norms) == 3
    for norm in model.teacher_connectors.norms:
        assert type(norm) is nn.BatchNorm2d and norm.num_features == t_width
        assert not norm.affine and not norm.track_running_stats
    assert list(model.distill_losses) == ['loss_cwd']
    loss, entry = model.distill_losses['loss_cwd'], model.loss_inputs['loss_cwd']
    assert type(loss) is CWDLoss and (loss.tau, loss.loss_weight) == (1.0, 1.0)
    assert (entry.source, entry.levels) == ('taps', [0, 1, 2])
    assert model.level_pairs['taps'] == {0: 0, 1: 1, 2: 2}
    assert (entry.schedule.warmup_iters, entry.schedule.stop_epoch) == (0, 280)
    hooks = {h.type: h for h in cfg.custom_hooks}
    assert cfg.train_cfg.max_epochs == 300
    assert hooks['PipelineSwitchHook'].switch_epoch == 280
    ema = hooks['EMAHook']
    assert (ema.ema_type, ema.momentum, ema.update_buffers) == ('ExpMomentumEMA', 0.0002, True)
