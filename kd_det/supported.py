"""The versions kd_det supports: declared once, for ``setup.py`` and for ``import kd_det``.

Each range runs from the oldest stack CI tests (``requirements/pins-oldest.txt``:
Python 3.8, torch 2.1.2 with numpy 1.24, mmengine 0.10.3) to the newest
(``requirements/pins.txt``: Python 3.11, torch 2.13.0 with numpy 2, mmengine
0.10.7). ``setup.py`` executes this file (it imports nothing at module level)
to declare them to pip; :func:`check_versions` refuses an installed version
outside them when kd_det is imported, before anything else fails obscurely.
"""
from typing import Dict, List

PYTHON = '>=3.8,<3.12'

#: distribution name -> the versions kd_det is tested with.
SUPPORTED: Dict[str, str] = {
    'torch': '>=2.1.2,<2.14',
    'numpy': '>=1.24,<3',
    'mmengine': '>=0.10.3,<0.11',
    'mmcv': '>=2.0.0rc4,<2.2.0',  # mmdet 3.3 asserts this range
    'mmdet': '>=3.3.0,<3.4',
}


def install_requires() -> List[str]:
    """The ranges as pip requirement strings (``setup.py``)."""
    return [f'{name}{spec}' for name, spec in SUPPORTED.items()]


def check_versions() -> None:
    """Raise ``ImportError`` naming every installed version outside its range.

    Python itself and each package in :data:`SUPPORTED` are checked against
    the declared ranges; packages that are not installed are left to the import
    that needs them.
    """
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    found = {'python': platform.python_version()}
    for name in SUPPORTED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    ranges = {'python': PYTHON, **SUPPORTED}
    bad = [f'{name} {ver} (kd_det supports {name}{ranges[name]})'
           for name, ver in found.items()
           if not SpecifierSet(ranges[name], prereleases=True).contains(
               Version(ver).base_version if name == 'torch' else ver, prereleases=True)]
    if bad:
        raise ImportError(
            'kd_det does not support the installed ' + '; '.join(bad) + '. Install a '
            'supported version (tested stacks: requirements/pins-oldest.txt and '
            'requirements/pins.txt; docs/install.md).')


#: File in mmcv's ``.dist-info`` where ``tools/setup_env.sh`` records the torch it built mmcv for.
MMCV_BUILD_RECORD = 'kd_det_built_for_torch'
_REBUILD = ('Rebuild mmcv for the installed torch: `KD_DET_TORCH=skip bash tools/setup_env.sh` '
            '(it builds and caches one mmcv wheel per torch), or `pip uninstall -y mmcv && '
            'MMCV_WITH_OPS=1 pip install --no-build-isolation --no-binary mmcv --no-cache-dir '
            '"mmcv==2.1.0"`; on a CUDA torch 2.0/2.1, `mim install "mmcv==2.1.0"` fetches the '
            'matching prebuilt wheel.')


def check_mmcv_build() -> None:
    """Raise ``ImportError`` when mmcv's compiled ops do not fit the installed torch.

    mmcv's ops (``mmcv._ext``) are C++ built against one torch; with another they
    fail to load with an undefined symbol, or load and misbehave. Where
    ``tools/setup_env.sh`` recorded the torch it built mmcv for, a different
    installed torch is refused up front; otherwise the ops are imported and a
    failure is explained.
    """
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, distribution

    import torch
    try:
        mmcv = distribution('mmcv')
    except PackageNotFoundError:
        return  # left to the import that needs it
    built_for = (mmcv.read_text(MMCV_BUILD_RECORD) or '').strip()
    if built_for and built_for != torch.__version__:
        raise ImportError(
            f'mmcv {mmcv.version} was built for torch {built_for}, but torch '
            f'{torch.__version__} is installed: its compiled ops do not fit this torch. '
            + _REBUILD)
    try:
        import_module('mmcv._ext')
    except ImportError as err:
        if isinstance(err, ModuleNotFoundError) and err.name == 'mmcv._ext':
            raise ImportError(
                f'mmcv {mmcv.version} has no compiled ops (mmcv._ext); kd_det needs them '
                '(NMS, RoIAlign). ' + _REBUILD) from None
        raise ImportError(
            f"mmcv {mmcv.version}'s compiled ops (mmcv._ext) do not load with torch "
            f'{torch.__version__}: they were built for '
            f'{"torch " + built_for if built_for else "another torch version"} ({err}). '
            + _REBUILD) from None
