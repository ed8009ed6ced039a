"""Safe checkpoint loading: mmengine's checkpoints load, anything else is refused."""
import os
import os.path as osp
import pathlib
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

import kd_det  # noqa: F401
from kd_det import safe_unpickler
from kd_det.checkpoint import (TORCH_ALLOW_LIST, CheckpointError, load_from_local, safe_load,
                               safe_load_url)


class Exploit:
    """Unpickling this would create a marker file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def mmengine_like_checkpoint():
    hub = MessageHub.get_instance('kd_det_test_checkpoint')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('iter', 3)
    return {
        'meta': {'epoch': 1, 'iter': 3, 'seed': 0,
                 'dataset_meta': {'classes': ('a', 'b'), 'palette': [(1, 2, 3)]}},
        'state_dict': {'w': torch.ones(2, 2)},
        'message_hub': hub.state_dict(),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.01, 'params': [0]}]},
        'np_scalar': np.float64(0.5),
        'np_array': np.arange(3),
    }


def test_mmengine_checkpoint_loads_through_the_allow_list(tmp_path):
    path = str(tmp_path / 'ok.pth')
    torch.save(mmengine_like_checkpoint(), path)
    loaded = safe_load(path)
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == pytest.approx(1 / 3)
    assert loaded['np_array'].tolist() == [0, 1, 2] and loaded['np_scalar'] == 0.5
    assert _load_checkpoint(path)['meta']['iter'] == 3


@pytest.mark.skipif(not TORCH_ALLOW_LIST, reason='torch < 2.6 loads anything by default')
def test_plain_torch_load_keeps_weights_only_and_succeeds(tmp_path):
    path = str(tmp_path / 'ok.pth')
    torch.save(mmengine_like_checkpoint(), path)
    loaded = torch.load(path)
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == pytest.approx(1 / 3)


def restricted_load(path):
    """kd_det's own unpickler, the loader on torch < 2.6, exercised on any torch."""
    return torch.load(path, pickle_module=safe_unpickler, weights_only=False)


def test_restricted_unpickler_loads_mmengine_and_refuses_the_rest(tmp_path):
    """The torch < 2.6 path on whichever torch runs the tests (both stacks in CI)."""
    good, evil, marker = tmp_path / 'ok.pth', tmp_path / 'evil.pth', tmp_path / 'pwned'
    torch.save(mmengine_like_checkpoint(), str(good))
    loaded = restricted_load(str(good))
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == pytest.approx(1 / 3)
    assert loaded['np_array'].tolist() == [0, 1, 2] and loaded['state_dict']['w'].sum() == 4
    torch.save({'state_dict': {}, 'payload': Exploit(str(marker))}, str(evil))
    with pytest.raises(pickle.UnpicklingError, match='pathlib.*not an allowed global'):
        restricted_load(str(evil))
    torch.save({'x': GetattrExploit()}, str(evil))
    with pytest.raises(pickle.UnpicklingError, match='only HistoryBuffer'):
        restricted_load(str(evil))
    assert not marker.exists()


@pytest.mark.parametrize('written_by', ['numpy 1.x', 'numpy 2'])
def test_checkpoint_from_the_other_numpy_major_loads(tmp_path, written_by):
    """numpy 1.x pickles name numpy.core.multiarray, numpy 2 numpy._core.multiarray: a
    checkpoint moved between the two stacks loads on both (legacy format: plain pickle bytes)."""
    path = tmp_path / 'np.pth'
    torch.save({'a': np.arange(3), 's': np.float32(2.5)}, str(path),
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    here = b'numpy._core.multiarray' if b'numpy._core.multiarray' in data else b'numpy.core.multiarray'
    there = b'numpy.core.multiarray' if written_by == 'numpy 1.x' else b'numpy._core.multiarray'
    path.write_bytes(data.replace(here, there))
    assert there in path.read_bytes()
    for load in (safe_load, restricted_load):
        loaded = load(str(path))
        assert loaded['a'].tolist() == [0, 1, 2] and loaded['s'] == np.float32(2.5)


def test_every_mmengine_scheme_loads_through_the_allow_list(tmp_path, monkeypatch):
    """Schemes whose mmengine loader calls torch.load itself (a local open-mmlab:// model here;
    s3/petrel and pavi alike) refuse a foreign pickle too."""
    import mmengine.runner.checkpoint as mme
    marker, evil = tmp_path / 'pwned', tmp_path / 'evil_model.pth'
    torch.save({'state_dict': {}, 'payload': Exploit(str(marker))}, str(evil))
    monkeypatch.setattr(mme, 'get_external_models', lambda: {'evil': str(evil)})
    with pytest.raises(pickle.UnpicklingError, match='pathlib'):
        CheckpointLoader.load_checkpoint('open-mmlab://evil')
    assert not marker.exists()
    good = tmp_path / 'good_model.pth'
    torch.save(mmengine_like_checkpoint(), str(good))
    monkeypatch.setattr(mme, 'get_external_models', lambda: {'good': str(good)})
    assert CheckpointLoader.load_checkpoint('open-mmlab://good')['meta']['iter'] == 3


def test_foreign_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {}, 'payload': Exploit(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r'Refusing to load .*evil\.pth.*pathlib'):
        CheckpointLoader.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize('content', ['truncated', 'text'])
def test_unreadable_file_names_the_file(tmp_path, content):
    path = str(tmp_path / 'bad.pth')
    if content == 'truncated':
        torch.save(mmengine_like_checkpoint(), path)
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])
    else:
        open(path, 'w').write('not a checkpoint')
    with pytest.raises(CheckpointError, match=r'bad\.pth.* not a readable PyTorch checkpoint'):
        safe_load(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _load_checkpoint(str(tmp_path / 'nope.pth'))


def test_url_loading_keeps_weights_only(tmp_path):
    marker = tmp_path / 'pwned'
    src = tmp_path / 'evil_remote.pth'
    torch.save({'payload': Exploit(str(marker))}, str(src))
    cache = str(tmp_path / 'cache')
    with pytest.raises(CheckpointError, match='Refusing to load'):
        safe_load_url(src.as_uri(), model_dir=cache)
    assert not marker.exists()
    good = tmp_path / 'good_remote.pth'
    torch.save(mmengine_like_checkpoint(), str(good))
    assert safe_load_url(good.as_uri(), model_dir=cache)['meta']['iter'] == 3
    assert osp.isfile(osp.join(cache, 'good_remote.pth'))


def test_http_scheme_goes_through_safe_loader():
    import mmengine.runner.checkpoint as mme
    assert mme.load_url is safe_load_url
    assert CheckpointLoader._get_checkpoint_loader('/some/file.pth') is load_from_local
    assert os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD') is None


class GetattrExploit:
    """A pickle that walks from an allowed class to its other attributes."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return (getattr, (HistoryBuffer, '__subclasses__'))


def test_getattr_is_restricted_to_history_buffer(tmp_path):
    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': GetattrExploit()}, path)
    with pytest.raises(CheckpointError, match='only HistoryBuffer'):
        safe_load(path)
