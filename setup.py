"""kd_det: knowledge distillation for MMDetection 3.x (install: tools/setup_env.sh)."""
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = osp.dirname(osp.abspath(__file__))
# Repository folders shipped as kd_det/.mim/<name>, where mmengine (`kd_det::` configs)
# and openmim (`mim train kd_det`) look an OpenMMLab-style package up.
MIM_FOLDERS = ('configs', 'tools')
# mmengine reads .mim/model-index.yml before it falls back to .mim/configs/<path>;
# kd_det has no model metafiles, so every `kd_det::x/y.py` is the file configs/x/y.py.
MODEL_INDEX = 'Import: []\n'


def read_module(name: str) -> dict:
    """The namespace of ``kd_det/<name>.py`` (files that import nothing at module level)."""
    namespace: dict = {}
    with open(osp.join(ROOT, 'kd_det', f'{name}.py')) as f:
        exec(f.read(), namespace)
    return namespace


SUPPORTED = read_module('supported')  # the supported ranges, as `import kd_det` checks them


def write_mim_folder(mim_dir: str, link: bool) -> None:
    """Fill ``mim_dir`` (``kd_det/.mim``) with configs/ and tools/: relative
    symlinks to the repository's folders when ``link``, else copies."""
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FOLDERS:
        src, dst = osp.join(ROOT, name), osp.join(mim_dir, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if link:
            os.symlink(osp.relpath(src, mim_dir), dst, target_is_directory=True)
        else:
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    with open(osp.join(mim_dir, 'model-index.yml'), 'w') as f:
        f.write(MODEL_INDEX)


class BuildPyWithMim(build_py):
    """``build_py`` that also ships configs/ and tools/ as ``kd_det/.mim``: copied
    into the build for a wheel, linked into the source tree for ``pip install -e``."""

    def run(self) -> None:
        super().run()
        if getattr(self, 'editable_mode', False):  # setuptools >= 64: pip install -e
            write_mim_folder(osp.join(ROOT, 'kd_det', '.mim'), link=True)
        else:
            write_mim_folder(osp.join(self.build_lib, 'kd_det', '.mim'), link=False)


setup(
    name='kd_det',
    version=read_module('version')['__version__'],
    description='Knowledge distillation for MMDetection 3.x: SSIM, RCKA/PCKA, RRD, '
                'UniKD and baseline neck-feature losses',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['kd_det', 'kd_det.*']),
    package_data={'kd_det.losses': ['ssim_cpu.cpp']},
    # The supported ranges (kd_det/supported.py); their tested ends are pinned in
    # requirements/pins-oldest.txt and requirements/pins.txt.
    python_requires=SUPPORTED['PYTHON'],
    install_requires=[
        *SUPPORTED['install_requires'](),
        'packaging',
        'opencv-python',
        'pycocotools',
        'matplotlib',
        'ninja',  # builds the fused SSIM CPU kernel on first use
    ],
    extras_require={'tests': ['pytest', 'kornia', 'pytorch_msssim']},
    cmdclass={'build_py': BuildPyWithMim},
    zip_safe=False,
)
