"""kd_det: knowledge distillation for MMDetection 3.x (install: tools/setup_env.sh)."""
import os.path as osp

from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    with open(osp.join(osp.dirname(__file__), 'kd_det', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='kd_det',
    version=read_version(),
    description='Knowledge distillation for MMDetection 3.x: SSIM, RCKA/PCKA, RRD, '
                'UniKD and baseline neck-feature losses',
    long_description=open(osp.join(osp.dirname(__file__), 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['kd_det', 'kd_det.*']),
    package_data={'kd_det.losses': ['ssim_cpu.cpp']},
    python_requires='>=3.8',
    # Compatible ranges; the tested versions are pinned in requirements/pins.txt.
    install_requires=[
        'torch>=2.0',
        'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.3.0,<3.4',
        'mmengine>=0.10.0,<0.11',
        'numpy',
        'opencv-python',
        'pycocotools',
        'matplotlib',
        'ninja',  # builds the fused SSIM CPU kernel on first use
    ],
    extras_require={'tests': ['pytest', 'kornia', 'pytorch_msssim']},
    zip_safe=False,
)
