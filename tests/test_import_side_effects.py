"""What importing kd_det changes in torch and mmengine (docs/checkpoint_safety.md),
and that a plain mmdet checkpoint still loads the same through mmdet's and mmengine's own
loaders afterwards: the one kd_det routes them through must not change what they return."""
import functools
import http.server
import os.path as osp
import subprocess
import sys
import threading

import mmengine
import numpy as np
import pytest
import torch
from mmdet.apis import init_detector
from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.fileio.backends import backends
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner import load_checkpoint
from mmengine.runner import checkpoint as mme_checkpoint

import kd_det
from kd_det import checkpoint as kd_checkpoint
from kd_det import safe_unpickler
from kd_det.engine.safe_checkpoint_hook import AtomicLocalBackend
from testing_utils import DEMO_STUDENT, REPO

# The list in docs/checkpoint_safety.md, checked one by one.
def allow_listed(entry) -> bool:
    """``entry`` is in the allow-list of this torch's loader (torch's own from 2.6 on)."""
    if kd_checkpoint.TORCH_ALLOW_LIST:
        return entry in torch.serialization.get_safe_globals()
    obj, name = entry if isinstance(entry, tuple) else (
        entry, f'{entry.__module__}.{entry.__qualname__}')
    return safe_unpickler.ALLOWED.get(name) is obj


DOCUMENTED = {
    'safe globals': lambda: all(map(allow_listed, kd_checkpoint.MMENGINE_SAFE_GLOBALS)),
    'torch.load in mmengine': lambda: mme_checkpoint.torch.load is not torch.load,
    'local scheme': lambda: mme_checkpoint.CheckpointLoader._get_checkpoint_loader(
        '/a/b.pth') is kd_checkpoint.load_from_local,
    'load_url': lambda: mme_checkpoint.load_url is kd_checkpoint.safe_load_url,
    'atomic_local backend': lambda: backends.get('atomic_local') is AtomicLocalBackend,
    'kd_det:: configs': lambda: MODULE2PACKAGE.get('kd_det') == 'kd_det.configs',
}


def test_documented_changes_are_in_effect_and_listed():
    assert {name: check() for name, check in DOCUMENTED.items()} == dict.fromkeys(DOCUMENTED,
                                                                                True)
    with open(osp.join(REPO, 'docs', 'checkpoint_safety.md')) as f:
        doc = f.read()
    for term in ('add_safe_globals', 'kd_det.safe_unpickler', 'mmengine.runner.checkpoint.torch',
                 'CheckpointLoader', 'load_url', 'atomic_local',
                 'MODULE2PACKAGE', 'kd_det.integration.install'):
        assert term in doc, term


def test_install_is_idempotent():
    loaders = dict(mme_checkpoint.CheckpointLoader._schemes)
    kd_det.install()
    kd_det.install()
    assert dict(mme_checkpoint.CheckpointLoader._schemes) == loaders
    assert all(check() for check in DOCUMENTED.values())


@pytest.mark.slow
def test_a_plain_mmengine_import_changes_nothing():
    """Without kd_det, mmengine keeps its own loaders (the changes come from the import)."""
    code = ('import mmengine.runner.checkpoint as c; '
            'print(c.load_url.__module__, c.CheckpointLoader._get_checkpoint_loader("/a.pth")'
            '.__module__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ['torch.hub', 'mmengine.runner.checkpoint']


# ------------------------------------------------------------ a model-zoo checkpoint
def zoo_checkpoint(model: torch.nn.Module) -> dict:
    """A checkpoint as mmdet 3.x training writes it (mmengine Runner.save_checkpoint's keys
    and meta, its message hub with numpy-backed HistoryBuffers) before publishing."""
    hub = MessageHub.get_instance('kd_det_zoo_checkpoint')
    for i in range(4):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
        hub.update_scalar('train/lr', np.float64(0.02))
    hub.update_info('iter', 4)
    hub.update_info('epoch', 1)
    return {
        'meta': {'cfg': Config.fromfile(DEMO_STUDENT).pretty_text, 'seed': 1234,
                 'experiment_name': 'faster-rcnn_r18_20240101_000000',
                 'time': '20240101_000000', 'mmengine_version': mmengine.__version__,
                 'dataset_meta': {'classes': ('circle', 'ring', 'square', 'triangle',
                                              'hexagon', 'star', 'cross'),
                                  'palette': [(220, 20, 60)] * 7},
                 'epoch': 1, 'iter': 4},
        'state_dict': model.state_dict(),
        'message_hub': hub.state_dict(),
        'optimizer': {'state': {0: {'momentum_buffer': torch.ones(3)}},
                      'param_groups': [{'lr': 0.02, 'momentum': 0.9, 'params': [0]}]},
        'param_schedulers': [{'base_lrs': [0.02], 'last_step': 4, 'by_epoch': True}],
    }


def published(checkpoint: dict) -> dict:
    """mmdet's tools/model_converters/publish_model.py: only ``meta`` and ``state_dict``."""
    return {k: checkpoint[k] for k in ('meta', 'state_dict')}


def assert_same(a, b, where='checkpoint'):
    """Equal structure, types and values (tensors, arrays, HistoryBuffers included)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f'{where}[{key!r}]')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, HistoryBuffer):
        assert_same(a.data, b.data, where)
        assert a.max_length == b.max_length, where
    else:
        assert a == b, where


@pytest.fixture(scope='module')
def student():
    torch.manual_seed(0)
    return init_detector(DEMO_STUDENT, device='cpu')


@pytest.mark.parametrize('form', ['training', 'published'])
def test_zoo_checkpoint_loads_identically_through_mmengine(student, tmp_path, form):
    checkpoint = zoo_checkpoint(student)
    if form == 'published':  # publish_model writes torch's legacy (non-zip) format
        checkpoint = published(checkpoint)
        torch.save(checkpoint, tmp_path / 'zoo.pth', _use_new_zipfile_serialization=False)
    else:
        torch.save(checkpoint, tmp_path / 'zoo.pth')
    path = str(tmp_path / 'zoo.pth')
    # the reference: full unpickling, fine for a file this test wrote itself
    reference = torch.load(path, map_location='cpu', weights_only=False)
    assert_same(reference, checkpoint)
    target = init_detector(DEMO_STUDENT, device='cpu')
    loaded = load_checkpoint(target, path, map_location='cpu')
    assert_same(loaded, reference)
    assert_same(target.state_dict(), reference['state_dict'])


def test_zoo_checkpoint_loads_through_mmdet_init_detector(student, tmp_path):
    checkpoint = published(zoo_checkpoint(student))
    path = str(tmp_path / 'zoo.pth')
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    model = init_detector(DEMO_STUDENT, path, device='cpu')
    assert_same(model.state_dict(), checkpoint['state_dict'])
    assert model.dataset_meta['classes'] == checkpoint['meta']['dataset_meta']['classes']


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_zoo_checkpoint_loads_identically_from_a_url(student, tmp_path, monkeypatch):
    """``http://`` goes through mmengine's scheme table to kd_det's safe URL loader."""
    served = tmp_path / 'served'
    served.mkdir()
    checkpoint = published(zoo_checkpoint(student))
    torch.save(checkpoint, served / 'faster-rcnn_zoo.pth', _use_new_zipfile_serialization=False)
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f'http://127.0.0.1:{server.server_port}/faster-rcnn_zoo.pth'
        target = init_detector(DEMO_STUDENT, device='cpu')
        loaded = load_checkpoint(target, url, map_location='cpu')
    finally:
        server.shutdown()
        server.server_close()
    assert_same(loaded, checkpoint)
    assert_same(target.state_dict(), checkpoint['state_dict'])
    assert osp.isfile(tmp_path / 'hub' / 'checkpoints' / 'faster-rcnn_zoo.pth')
