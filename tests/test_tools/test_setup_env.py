"""tools/setup_env.sh on an existing environment: it keeps the user's torch, and a failed
setup leaves the environment with exactly the packages it had."""
import os
import os.path as osp
import subprocess
import sys

import pytest

from testing_utils import REPO

SETUP = osp.join(REPO, 'tools', 'setup_env.sh')


def freeze(python):
    return subprocess.run([python, '-m', 'pip', 'freeze', '--all'], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.slow
def test_a_failed_setup_puts_an_existing_env_back_and_keeps_its_torch(tmp_path):
    """An env with a (stand-in) torch 2.1.2 and KD_DET_TORCH=skip: no constraint may replace
    that torch; the mmcv build then fails against the stand-in, after setuptools, numpy and
    packaging were installed, and the script must undo those and say so."""
    env = tmp_path / 'env'
    subprocess.run([sys.executable, '-m', 'venv', str(env)], check=True)
    python = str(env / 'bin' / 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    # a torch that imports and is listed by pip, but cannot build anything
    os.makedirs(osp.join(site, 'torch'))
    with open(osp.join(site, 'torch', '__init__.py'), 'w') as f:
        f.write("__version__ = '2.1.2'\n")
    os.makedirs(osp.join(site, 'torch-2.1.2.dist-info'))
    with open(osp.join(site, 'torch-2.1.2.dist-info', 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: torch\nVersion: 2.1.2\n')
    open(osp.join(site, 'torch-2.1.2.dist-info', 'RECORD'), 'w').close()
    before = freeze(python)
    assert 'torch==2.1.2' in before and 'numpy' not in before
    run = subprocess.run(['bash', SETUP], capture_output=True, text=True,
                         env={**os.environ, 'KD_DET_VENV': str(env), 'KD_DET_TORCH': 'skip',
                              'KD_DET_CACHE': str(tmp_path / 'cache')})
    assert run.returncode != 0
    assert ('the environment is left as it was: ' + str(env) + ' has the packages it had before'
            in run.stdout), run.stdout + run.stderr
    assert freeze(python) == before
    assert not osp.exists(tmp_path / 'cache' / 'mmcv') or not os.listdir(tmp_path / 'cache' / 'mmcv')


@pytest.mark.slow
def test_a_failed_setup_removes_the_venv_it_made(tmp_path):
    env = tmp_path / 'new_env'
    pins = tmp_path / 'pins.txt'
    pins.write_text('# python: %d.%d\ntorch==0.0.0\nsetuptools<81\n' % sys.version_info[:2])
    run = subprocess.run(['bash', SETUP], capture_output=True, text=True,
                         env={**os.environ, 'KD_DET_VENV': str(env), 'KD_DET_PINS': str(pins),
                              'PYTHON': sys.executable})
    assert run.returncode != 0
    assert f'the venv this run made at {env} was removed' in run.stdout, run.stdout + run.stderr
    assert not env.exists()
