"""The wheel as a user gets it: built from a copy of the repository, installed (not
editable) into a throwaway venv, it trains a five-line user config that inherits a
``kd_det::`` config, from an empty folder, and exports the student."""
import glob
import os
import os.path as osp
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

from testing_utils import COCO128_DATA, REPO, coco128_root, needs_coco128, save_random_teacher

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

# The user's config: a kd_det recipe with their own teacher (here: the demo's teacher,
# randomly initialised) and the 80 COCO classes; COCO128_DATA points it at coco128.
USER_CONFIG = '''\
_base_ = 'kd_det::demo/ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(teacher_config='kd_det::demo/faster-rcnn_r34-half_fpn_shapes.py',
             teacher_ckpt='teacher.pth',
             student=dict(roi_head=dict(bbox_head=dict(num_classes=80))))
'''
# what must not travel with the copy the wheel is built from
NOT_SOURCES = shutil.ignore_patterns('.git', '.venv', '__pycache__', '*.pyc', 'build', 'dist',
                                     '*.egg-info', '.mim', 'work_dirs', 'data', 'checkpoints',
                                     '.pytest_cache')


def run(cmd: list, cwd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` without PYTHONPATH (nothing may leak the repository in); fail with its output.

    SSIM runs in PyTorch: compiling its fused kernel (first use on a machine) takes ~30 s.
    """
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['KD_DET_SSIM_KERNEL'] = '0'
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f'{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-5000:]}')
    return proc


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> str:
    """kd_det's wheel, built by pip from a clean copy of the repository."""
    root = tmp_path_factory.mktemp('wheel')
    src = str(root / 'src')
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)
    run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
         '--disable-pip-version-check', '-q', '-w', str(root / 'dist'), src], cwd=str(root))
    wheels = glob.glob(str(root / 'dist' / 'kd_det-*.whl'))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope='module')
def venv_python(wheel, tmp_path_factory) -> str:
    """A throwaway venv holding the wheel's kd_det, over this environment's packages.

    ``venv --system-site-packages`` would reach the base interpreter's packages, not
    this (virtual) environment's; a .pth line reaches them instead. It only extends
    sys.path, so the .pth files there (this repo's editable install) do not run.
    """
    venv = tmp_path_factory.mktemp('venv')
    run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], cwd=str(venv))
    python = str(venv / 'bin' / 'python')
    own = run([python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
              cwd=str(venv)).stdout.strip()
    with open(osp.join(own, 'test_env.pth'), 'w') as f:
        f.write('\n'.join(site.getsitepackages()) + '\n')
    # -I: install beside the editable kd_det of this environment, never uninstall it
    run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-I', '-q',
         '--disable-pip-version-check', wheel], cwd=str(venv))
    return python


def test_wheel_ships_configs_and_tools(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ('kd_det/.mim/configs/ssim/ssim_faster-rcnn_r101-to-r50_fpn_2x_coco.py',
                 'kd_det/.mim/configs/_base_/faster-rcnn_r101-to-r50_fpn_2x_coco.py',
                 'kd_det/.mim/tools/train.py', 'kd_det/.mim/tools/test.py',
                 'kd_det/.mim/tools/export_student.py', 'kd_det/.mim/model-index.yml',
                 'kd_det/.mim/tools/preflight.py',  # mim run kd_det preflight
                 'kd_det/train.py', 'kd_det/test.py', 'kd_det/export.py', 'kd_det/preflight.py',
                 'kd_det/losses/ssim_cpu.cpp'):
        assert name in names, name
    assert not [n for n in names if '__pycache__' in n]


@needs_coco128
def test_user_config_trains_and_exports_from_an_empty_folder(venv_python, tmp_path):
    user = str(tmp_path)
    origin = run([venv_python, '-c', 'import importlib.util as u; '
                  'print(u.find_spec("kd_det").origin)'], cwd=user).stdout.strip()
    assert not origin.startswith(REPO + os.sep), f'imports the repository: {origin}'
    assert osp.dirname(osp.dirname(venv_python)) in origin, origin

    save_random_teacher(osp.join(user, 'teacher.pth'))
    with open(osp.join(user, 'my_ssim.py'), 'w') as f:
        f.write(USER_CONFIG + COCO128_DATA.format(coco128=coco128_root(), epochs=1))
    # 8 images, batch 4, one epoch: two iterations
    run([venv_python, '-m', 'kd_det.train', 'my_ssim.py', '--work-dir', 'work'], cwd=user)
    assert osp.isfile(osp.join(user, 'work', 'epoch_1.pth'))

    out = run([venv_python, '-m', 'kd_det.export', 'work/epoch_1.pth', 'student.pth'],
              cwd=user).stdout
    assert 'student tensors' in out and osp.isfile(osp.join(user, 'student.pth'))


# A user's own RTMDet / DINO distillation: the CPU-sized recipes of kd_det::demo_modern with
# their own teacher checkpoint, on the shapes the installed kd_det generates in the folder.
MODERN = {
    'rtmdet': ('cwd-kd_rtmdet_micro-to-nano_shapes.py', 'rtmdet_micro_shapes.py'),
    'dino': ('pkd_dino-5scale-to-4scale_shapes.py', 'dino-5scale_r34-half_shapes.py'),
}


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(MODERN))
def test_user_modern_config_trains_from_an_empty_folder(venv_python, tmp_path, family):
    user = str(tmp_path)
    distill, teacher = MODERN[family]
    save_random_teacher(osp.join(user, 'teacher.pth'),
                        osp.join(REPO, 'configs', 'demo_modern', teacher))
    with open(osp.join(user, 'mine.py'), 'w') as f:
        f.write(f"_base_ = 'kd_det::demo_modern/{distill}'\n"
                "model = dict(teacher_ckpt='teacher.pth')\n"
                'train_dataloader = dict(batch_size=8)\n')
    run([venv_python, '-m', 'kd_det.demo.synthetic_coco', 'data/kd_det_shapes',
         '--num-train', '8', '--num-val', '4', '--num-tune', '1', '--size', '128', '128'],
        cwd=user)
    # the config's default data_root, data/kd_det_shapes/, relative to the user's folder;
    # its 4 epochs of one 8-image batch (RTMDet: the last one plain, undistilled)
    run([venv_python, '-m', 'kd_det.train', 'mine.py', '--work-dir', 'work'], cwd=user)
    run([venv_python, '-m', 'kd_det.export', 'work/epoch_4.pth', 'student.pth'], cwd=user)
    assert osp.isfile(osp.join(user, 'student.pth'))
