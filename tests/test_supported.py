"""The supported stack: declared once (kd_det/supported.py), pinned at its two tested ends
(requirements/pins-oldest.txt, requirements/pins.txt), checked at `import kd_det`."""
import os.path as osp
import platform
import re
import subprocess
import sys
from importlib import metadata

import pytest
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from kd_det import supported
from testing_utils import REPO


def read_pins(name):
    """``{package: version}`` of the ``==`` pins in requirements/NAME, and its ``# python:``."""
    with open(osp.join(REPO, 'requirements', name)) as f:
        text = f.read()
    pins = dict(re.findall(r'^([A-Za-z0-9_.-]+)==(\S+)$', text, re.M))
    pins['python'] = re.search(r'^# python: ([0-9.]+)', text, re.M).group(1)
    return pins


OLDEST, NEWEST = read_pins('pins-oldest.txt'), read_pins('pins.txt')
RANGES = {'python': supported.PYTHON, **supported.SUPPORTED}


@pytest.mark.parametrize('pins', [OLDEST, NEWEST], ids=['oldest', 'newest'])
def test_each_tested_stack_lies_in_the_declared_ranges(pins):
    for name, ver in pins.items():
        if name in RANGES:
            assert Version(ver) in SpecifierSet(RANGES[name], prereleases=True), (name, ver)


def test_the_ranges_start_at_the_oldest_tested_stack():
    """A lower bound below the oldest tested version would claim an untested version."""
    for name in ('python', 'torch', 'numpy', 'mmengine'):
        lower = [s.version for s in SpecifierSet(RANGES[name]) if s.operator == '>=']
        assert lower and Version(OLDEST[name]).release[:len(Version(lower[0]).release)] \
            == Version(lower[0]).release, (name, lower, OLDEST[name])
    # the upper bounds admit the newest tested stack and nothing past its minor release
    for name in ('python', 'torch'):
        upper = [s.version for s in SpecifierSet(RANGES[name]) if s.operator == '<']
        newest = Version(NEWEST[name]).release
        assert Version(upper[0]).release == (newest[0], newest[1] + 1), (name, upper)


def test_setup_py_declares_the_same_ranges():
    with open(osp.join(REPO, 'setup.py')) as f:
        setup_py = f.read()
    assert "python_requires=SUPPORTED['PYTHON']" in setup_py
    assert "*SUPPORTED['install_requires']()" in setup_py
    assert supported.install_requires() == [f'{n}{s}' for n, s in supported.SUPPORTED.items()]


def test_this_stack_passes_the_import_check():
    supported.check_versions()
    supported.check_mmcv_build()


@pytest.mark.parametrize('name, bad', [('torch', '2.0.1'), ('numpy', '3.0.0'),
                                       ('mmengine', '0.10.1'), ('mmengine', '0.11.0')])
def test_an_unsupported_version_is_named_with_the_range(monkeypatch, name, bad):
    real = metadata.version
    monkeypatch.setattr(metadata, 'version', lambda dist: bad if dist == name else real(dist))
    with pytest.raises(ImportError, match=re.escape(f'{name} {bad} (kd_det supports '
                                                    f'{name}{supported.SUPPORTED[name]})')):
        supported.check_versions()


def test_an_unsupported_python_is_named(monkeypatch):
    monkeypatch.setattr(platform, 'python_version', lambda: '3.7.16')
    with pytest.raises(ImportError, match=re.escape(f'python 3.7.16 (kd_det supports '
                                                    f'python{supported.PYTHON})')):
        supported.check_versions()


def test_a_cuda_build_tag_is_not_a_different_torch(monkeypatch):
    real = metadata.version
    lowest = OLDEST['torch']
    monkeypatch.setattr(metadata, 'version',
                        lambda dist: f'{lowest}+cu121' if dist == 'torch' else real(dist))
    supported.check_versions()


class FakeMmcv:
    version = '2.1.0'

    def __init__(self, built_for):
        self.built_for = built_for

    def read_text(self, name):
        return self.built_for if name == supported.MMCV_BUILD_RECORD else None


def test_mmcv_built_for_another_torch_names_both_versions(monkeypatch):
    monkeypatch.setattr(metadata, 'distribution', lambda name: FakeMmcv('2.1.2+cu121'))
    monkeypatch.setattr(torch, '__version__', '2.13.0+cpu')
    with pytest.raises(ImportError, match=r'mmcv 2\.1\.0 was built for torch 2\.1\.2\+cu121, '
                                          r'but torch 2\.13\.0\+cpu is installed.*setup_env'):
        supported.check_mmcv_build()


def test_an_undefined_symbol_is_explained(monkeypatch):
    """mmcv from elsewhere (no record): the ops' import error is turned into advice."""
    import importlib

    def broken(name, *args):
        if name == 'mmcv._ext':
            raise ImportError('/venv/mmcv/_ext.cpython-311-x86_64-linux-gnu.so: undefined '
                              'symbol: _ZN2at4_ops10zeros_like4callERKNS_6TensorE')
        return real(name, *args)
    real = importlib.import_module
    monkeypatch.setattr(metadata, 'distribution', lambda name: FakeMmcv(None))
    monkeypatch.setattr(importlib, 'import_module', broken)
    with pytest.raises(ImportError, match=rf"mmcv 2\.1\.0's compiled ops .* do not load with "
                                          rf"torch {re.escape(torch.__version__)}: they were "
                                          r"built for another torch version.*undefined symbol"):
        supported.check_mmcv_build()


@pytest.mark.slow
def test_import_kd_det_refuses_an_unsupported_stack_in_one_message():
    """The check runs at `import kd_det`, before the import fails elsewhere."""
    code = ('import importlib.metadata as m; real = m.version; '
            "m.version = lambda d: '0.9.1' if d == 'mmengine' else real(d); import kd_det")
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith('ImportError: kd_det does not support the installed mmengine 0.9.1'), last


def test_setup_env_recorded_the_torch_it_built_this_mmcv_for():
    """The record check_mmcv_build reads is the one tools/setup_env.sh writes (both CI venvs)."""
    record = metadata.distribution('mmcv').read_text(supported.MMCV_BUILD_RECORD)
    if record is None:
        pytest.skip('this mmcv was not installed by tools/setup_env.sh')
    assert record.strip() == torch.__version__
