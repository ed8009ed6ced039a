"""Shared test helpers: tiny detectors on coco128, or a generated stand-in without it.

The data: the real COCO images of ``../shared/data/coco128`` (beside the repository; the
environment variable ``KD_DET_TEST_DATA`` names another folder holding ``coco128/``). A
clone without it gets a coco128-shaped stand-in made by kd_det's synthetic-shapes generator
(see :func:`make_coco128_standin`), generated once per test session by the ``coco128``
fixture of conftest.py, so the same tests run from the repository alone.
"""
import json
import multiprocessing
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
from typing import Any, Callable, Dict, Optional

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA_ROOT = os.environ.get('KD_DET_TEST_DATA') or osp.join(REPO, '..', 'shared', 'data')
SHARED_COCO128 = osp.normpath(osp.join(DATA_ROOT, 'coco128'))
COCO128_ANN = osp.join('annotations', 'instances_train2017.json')
DEMO_STUDENT = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r18-tiny_fpn_shapes.py')
DEMO_TEACHER = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r34-half_fpn_shapes.py')
DEMO_PAIR = osp.join(REPO, 'configs', '_base_', 'faster-rcnn_r34h-to-r18t_fpn_shapes.py')

#: Tests that train on coco128 (or its stand-in): they get the ``coco128`` session fixture.
needs_coco128 = pytest.mark.usefixtures('coco128')
_coco128_root: Optional[str] = None


def has_coco128(root: str = SHARED_COCO128) -> bool:
    return osp.isfile(osp.join(root, COCO128_ANN))


def make_coco128_standin(out_dir: str, num_images: int = 128, size: int = 128) -> str:
    """A coco128-shaped dataset at ``out_dir``: ``train2017/`` and ``annotations/
    instances_train2017.json`` naming COCO's 80 classes, from kd_det's synthetic shapes
    (seed 0, ``size`` x ``size`` PNGs); the 7 shapes are the first 7 COCO classes."""
    from mmdet.datasets import CocoDataset

    from kd_det.demo.synthetic_coco import generate_dataset
    shapes = generate_dataset(osp.join(out_dir, 'shapes'), num_train=num_images, num_val=1,
                              num_tune=1, image_size=(size, size), seed=0)
    with open(shapes['train_ann_file']) as f:
        coco = json.load(f)
    coco['categories'] = [dict(id=i + 1, name=name, supercategory='coco')
                          for i, name in enumerate(CocoDataset.METAINFO['classes'])]
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    with open(osp.join(out_dir, COCO128_ANN), 'w') as f:
        json.dump(coco, f)
    os.replace(shapes['train_img_dir'], osp.join(out_dir, 'train2017'))
    shutil.rmtree(shapes['root'])
    return out_dir


def use_coco128(root: str) -> None:
    """Make :func:`coco128_root` return ``root`` (the ``coco128`` fixture calls this)."""
    global _coco128_root
    _coco128_root = root


def coco128_root() -> str:
    """The coco128 folder of this session: the shared one or the generated stand-in."""
    if _coco128_root is None:
        raise RuntimeError('coco128_root() needs the coco128 fixture: mark the test '
                           '@needs_coco128 (or request the fixture)')
    return _coco128_root

# The demo's tiny Faster R-CNN recipe, retargeted to coco128's 80 classes at 128 px:
# 8 training images (2 iterations of 4 per epoch) and 8 held-out validation images.
COCO128_DATA = '''
data_root = {coco128!r} + '/'
img = (128, 128)
_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img, keep_ratio=True),
    dict(type='PackDetInputs'),
]
_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
_data = dict(_delete_=True, type='CocoDataset', data_root=data_root,
             ann_file='annotations/instances_train2017.json',
             data_prefix=dict(img='train2017/'), filter_cfg=dict(filter_empty_gt=True))
train_dataloader = dict(batch_size=4, sampler=dict(shuffle=False),
                        dataset=dict(_data, indices=list(range(8)), pipeline=_train_pipeline))
val_dataloader = dict(batch_size=4, dataset=dict(_data, indices=list(range(100, 108)),
                                                 test_mode=True, pipeline=_test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_train2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs={epochs}, val_interval={epochs})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=3))
randomness = dict(seed=0)
'''

# 80 classes; keep every box (a 2-iteration model scores below the default 0.05)
TINY_HEAD = '''
model = dict({prefix}roi_head=dict(bbox_head=dict(num_classes=80)),
             test_cfg=dict(rcnn=dict(score_thr=0.0)){suffix})
'''


def write_config(directory: str, name: str, text: str) -> str:
    """Write a config file and return its path."""
    os.makedirs(directory, exist_ok=True)
    path = osp.join(directory, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


def coco128_config(directory: str, name: str, base: str, epochs: int = 1,
                   extra: str = '', distill: bool = False) -> str:
    """A config inheriting ``base`` (a demo config), trained on 8 coco128 images (needs the
    ``coco128`` fixture)."""
    head = (TINY_HEAD.format(prefix='student=dict(', suffix=')') if distill
            else TINY_HEAD.format(prefix='', suffix=''))
    text = (f'_base_ = {base!r}\n' + COCO128_DATA.format(coco128=coco128_root(), epochs=epochs)
            + head + extra)
    return write_config(directory, name, text)


def run_tool(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python tools/<args>`` from the repo root; fail with its output on error."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-5000:]}')
    return proc


def save_random_teacher(path: str, config: str = DEMO_TEACHER, seed: int = 0) -> str:
    """Save ``config``'s model with seeded random weights, initialised as training starts
    (no Pretrained downloads), as a checkpoint."""
    from kd_det.analysis.random_weights import save_random_detector
    from kd_det.models import load_config
    return save_random_detector(load_config(config).model, path, seed)


def synthetic_batch(num: int = 2, size: int = 64, shift: float = 0.0):
    """A preprocessed batch: ``num`` seeded random ``size`` x ``size`` images (``img_id`` 0 to
    ``num - 1``), one box of class 2 each (image ``i``'s moved by ``i * shift`` pixels), as
    ``(inputs, data_samples)``."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    torch.manual_seed(1)
    inputs = torch.randn(num, 3, size, size)
    samples = []
    for i in range(num):
        sample = DetDataSample(metainfo=dict(img_id=i, img_shape=(size, size),
                                             pad_shape=(size, size), ori_shape=(size, size),
                                             scale_factor=(1., 1.),
                                             batch_input_shape=(size, size)))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[4., 6., 40., 50.]]) + i * shift, labels=torch.tensor([2]))
        samples.append(sample)
    return inputs, samples


def resumed_runner(cfg):
    """A Runner for ``cfg`` (with ``resume`` set) that has loaded its checkpoint, untrained.

    ``Runner.train()`` builds the loop, optimizer and schedulers before it resumes; this does
    the same steps and stops there, so tests can compare the restored state with the file.
    """
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
    runner.load_or_resume()
    return runner


def snapshot_hook():
    """A hook whose ``state`` holds the model's weights as training starts (after init)."""
    from mmengine.hooks import Hook

    class Snapshot(Hook):
        priority = 'VERY_HIGH'

        def before_train(self, runner):
            self.state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    return Snapshot()


def _gloo_rank(work: Callable[[int], Any], rank: int, world_size: int, port: int,
               results) -> None:
    import torch
    torch.set_num_threads(1)
    torch.distributed.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                                         rank=rank, world_size=world_size)
    try:
        results[rank] = work(rank)
    finally:
        torch.distributed.destroy_process_group()


def run_gloo_ranks(work: Callable[[int], Any], world_size: int = 2) -> Dict[int, Any]:
    """``{rank: work(rank)}`` from ``world_size`` fresh processes in one gloo process group.

    ``work``, a module-level function (the processes are spawned, so it is pickled by name),
    runs between ``init_process_group`` and ``destroy_process_group`` and returns something
    picklable; every process must exit cleanly (asserted). Spawned, not forked: a fork of
    the test process inherits whatever threads and locks earlier tests left in it; a forked
    rank once failed late in an oldest-stack run, and never when run alone.
    """
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    ctx = multiprocessing.get_context('spawn')
    with ctx.Manager() as manager:
        shared = manager.dict()
        procs = [ctx.Process(target=_gloo_rank, args=(work, r, world_size, port, shared))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        timeout = 120  # seconds; a spawned rank first imports torch and the test module
        for p in procs:
            p.join(timeout)
        hung = [rank for rank, p in enumerate(procs) if p.is_alive()]
        for rank in hung:
            procs[rank].terminate()
        results = dict(shared)
    exits = [p.exitcode for p in procs]
    assert not hung and exits == [0] * world_size, (
        f'gloo ranks: exit codes {exits}, still running after {timeout} s: {hung}, '
        f'results from ranks {sorted(results)}')
    return results

