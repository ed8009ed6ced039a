"""Every trainable parameter of every shipped distillation config gets a gradient in a step.

mmdet wraps the model in DDP with ``find_unused_parameters=False``: one trainable parameter
left out of a step's graph (a connector on a level no loss reads, a loss head whose term
was dropped) stops the next iteration, or hangs the ranks. This builds each shipped
distillation config's distiller for real on CPU -- the configured student, teacher,
losses, sources, levels, connectors, unchanged -- runs ``loss()`` on a batch of two 64x64
images with one box each, back-propagates the summed loss as mmengine does
(``parse_losses``, the sum of the keys holding ``loss``) and lists the trainable parameters left
without a gradient.

What is changed, and why it cannot hide a missing gradient:

* The teacher is built from its config with random weights instead of loading
  ``teacher_ckpt`` (no download); it is frozen either way, and which parameters of the
  distiller are in the graph does not depend on the teacher's values. Teachers of equal
  config are built once and shared.
* SyncBN becomes BN (SyncBN needs a process group; both normalise the same way here).
* The student's and teacher's R-CNN samplers take 64 RoIs per image, not 512: the RoI
  head's parameters are in the graph for any number of sampled RoIs, and 512 RoIs through
  a 12544 -> 1024 FC would make this test minutes long.
* DINO takes 50 queries, not 900: its two-stage encoder picks the top ``num_queries``
  of its tokens, of which a 64x64 image has 85; the query count sizes one embedding, and
  every query parameter is in the graph for any count.
* ``init_weights()`` runs on the student side and on the teacher, as mmengine's runner
  does before training, but without ``Pretrained`` init_cfgs (no download): without it,
  parameters mmdet creates empty (a DINO student's level embedding) hold whatever memory
  they got, NaN now and then, and the matcher refuses them.
* Configs whose ``model`` is identical but for ``teacher_ckpt`` (the 1x and 2x schedules
  of one pair) are checked once.

Full-size backbones are kept (R-50/R-101, X-101, Swin, CSPNeXt): at 64x64 their forward
and backward are cheap; building the biggest teachers (Swin-L, X-101-64x4d) is most of
this test's time.
"""
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmdet.registry import MODELS

from testing_utils import REPO, synthetic_batch
from kd_det.analysis.random_weights import random_detector, without_pretrained
from kd_det.models.teacher import teacher_model_cfg

pytestmark = pytest.mark.slow


def distill_configs():
    """``[(path, model config)]``, one per distinct distiller among the shipped configs.

    Parsed here, not at collection: parsing every config takes seconds, which each run
    of the suite would pay even with this slow test deselected.
    """
    seen = {}
    for path in sorted(glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)):
        if '_base_' in path.split(osp.sep):
            continue
        model = Config.fromfile(path).model
        if model.get('type') != 'FeatureDistillDetector':
            continue
        key = model.to_dict()
        key.pop('teacher_ckpt', None)
        key['teacher_config'] = teacher_model_cfg(key['teacher_config']).to_dict()
        seen.setdefault(json.dumps(key, sort_keys=True, default=str), (path, model))
    return sorted(seen.values(), key=lambda entry: entry[0])


def _shrunk(cfg):
    """``cfg`` with SyncBN as BN, no Pretrained init_cfg, 64 sampled RoIs per image, 50 DINO
    queries (see the module docstring)."""
    return _small(without_pretrained(cfg))


def _small(cfg):
    if isinstance(cfg, dict):
        out = {k: _small(v) for k, v in cfg.items()}
        if out.get('type') == 'SyncBN':
            out['type'] = 'BN'
        if 'num_queries' in out and out.get('type') in ('DINO', 'DeformableDETR'):
            out['num_queries'] = 50  # topk over the encoder's tokens: 85 at 64x64
        rcnn = out.get('rcnn')
        if isinstance(rcnn, dict) and isinstance(rcnn.get('sampler'), dict):
            rcnn['sampler']['num'] = 64
        if isinstance(rcnn, list):  # cascade heads
            for stage in rcnn:
                if isinstance(stage.get('sampler'), dict):
                    stage['sampler']['num'] = 64
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_small(v) for v in cfg)
    return cfg


def random_teachers():
    """kd_det's ``build_teacher`` without the checkpoint: random weights, frozen, shared by
    the configs of one test (and freed with it: the biggest teachers take gigabytes)."""
    teachers = {}

    def random_teacher(model_cfg, checkpoint, strict=True):
        key = json.dumps(dict(model_cfg), sort_keys=True, default=str)
        if key not in teachers:
            teacher = random_detector(_shrunk(dict(model_cfg)))
            teachers[key] = teacher.requires_grad_(False).eval()
        return teachers[key]
    return random_teacher


def missing_gradients(model_cfg) -> list:
    """The trainable parameters of the distiller ``model_cfg`` without a gradient after one
    ``loss()`` and backward on two 64x64 images (128x128 with a deformable-conv teacher)."""
    torch.manual_seed(0)
    model = MODELS.build(ConfigDict(_shrunk(model_cfg.to_dict())))
    model.init_weights()  # the teacher is outside the module tree: initialised once above
    model.train()
    # mmcv's CPU deformable conv refuses a map smaller than its kernel: at 64x64 the stride-32
    # level of a DCN backbone is 2x2, so those configs take 128x128 images
    deformable = any('DeformConv' in type(m).__name__ for m in model.teacher.modules())
    inputs, samples = synthetic_batch(num=2, size=128 if deformable else 64, shift=8.0)
    losses = model.loss(inputs, samples)
    for name in model.distill_losses:
        assert torch.isfinite(losses[name]).all(), (name, losses[name])
    model.parse_losses(losses)[0].backward()  # mmengine's sum of the `loss` keys
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any(n.startswith('teacher') for n in trainable)  # the teacher stays outside
    if model.connectors is not None:
        assert any(n.startswith('connectors.') for n in trainable)
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def test_every_trainable_parameter_of_every_shipped_config_gets_a_gradient(monkeypatch):
    monkeypatch.setattr('kd_det.models.feature_distill_detector.build_teacher',
                        random_teachers())
    configs = distill_configs()
    names = {osp.relpath(path, osp.join(REPO, 'configs')) for path, _ in configs}
    # every folder of distillation configs is in: the COCO ones and the CPU-sized ones
    for folder in ('ssim', 'rcka', 'ssim_rcka', 'feature_mse', 'pkd', 'cwd', 'rrd', 'unikd',
                   'logit_kd', 'ssim_kd', 'rtmdet', 'dino', 'fgd', 'mgd', 'crosskd', 'ld',
                   'demo', 'demo_modern'):
        assert any(n.startswith(folder + osp.sep) for n in names), folder
    assert len(configs) >= 25, sorted(names)
    failures = {}
    for path, model_cfg in configs:
        try:
            missing = missing_gradients(model_cfg)
        except Exception as err:  # every config is reported, not the first failure only
            failures[osp.relpath(path, REPO)] = f'{type(err).__name__}: {err}'
            continue
        if missing:
            failures[osp.relpath(path, REPO)] = f'{len(missing)} without gradient: {missing[:8]}'
    assert not failures, failures
