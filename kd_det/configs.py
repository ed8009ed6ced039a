"""kd_det's configs by package name: ``_base_ = 'kd_det::ssim/...'``; any package's for tools.

The wheel ships the repository's ``configs/`` and ``tools/`` as ``kd_det/.mim/``
(an editable install links them there), where mmengine and openmim look an
OpenMMLab package up. mmengine resolves ``pkg::`` only for the packages of its
``MODULE2PACKAGE`` map, and reads ``_base_`` before any ``custom_imports``:
importing kd_det adds it to that map, so a tool must import kd_det before it
reads a config that inherits ``kd_det::`` (``python -m kd_det.train`` does).
"""
import os
import os.path as osp
import re

from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE

PREFIX = 'kd_det::'
MIM_DIR = osp.join(osp.dirname(osp.abspath(__file__)), '.mim')
CONFIG_DIR = osp.join(MIM_DIR, 'configs')
# mmengine's check_file_exist message for a `pkg::` base that is not there
_MISSING = re.compile(r'file "(?P<path>.+)" does not exist')


def register_package() -> None:
    """Let mmengine resolve ``kd_det::`` config paths.

    mmengine locates the package of a ``pkg::`` prefix from its distribution
    metadata, which points beside the sources for an editable install. The
    name mapped here, a module of kd_det, has no distribution, so mmengine
    falls back to the import system and finds kd_det's folder for a wheel and
    an editable install alike.
    """
    MODULE2PACKAGE['kd_det'] = __name__


def config_path(name: str) -> str:
    """The file of ``kd_det::NAME`` (or of ``NAME``, relative to kd_det's configs).

    Raises:
        FileNotFoundError: naming ``NAME`` and the folder searched.
    """
    rel = name[len(PREFIX):] if name.startswith(PREFIX) else name
    path = osp.join(CONFIG_DIR, rel)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{PREFIX}{rel}: no such config in {CONFIG_DIR} '
                                f'(its folders: {", ".join(_folders())})')
    return path


def package_config_path(name: str) -> str:
    """The file of ``PACKAGE::NAME`` for any package mmengine resolves (``mmdet::``,
    ``mmyolo::``, ... installed) as it resolves a ``_base_``; ``kd_det::`` by
    :func:`config_path`. Installs nothing.

    Raises:
        FileNotFoundError: naming ``name`` and what is missing (package or file).
    """
    if name.startswith(PREFIX):
        return config_path(name)
    package = name.partition('::')[0]
    if package not in MODULE2PACKAGE:
        raise FileNotFoundError(f'{name}: unknown package {package!r}; configs resolve by '
                                f'package for {sorted(MODULE2PACKAGE)}')
    try:
        return Config._get_cfg_path(name, '')[0]
    except (ValueError, AssertionError, ModuleNotFoundError, FileNotFoundError) as err:
        raise FileNotFoundError(f'{name}: {err}') from None


def read_config(filename: str) -> Config:
    """``Config.fromfile`` for kd_det's tools: ``filename`` may be a package path
    (``kd_det::NAME``, ``mmdet::NAME``, see :func:`package_config_path`), and an unknown
    ``kd_det::`` base is reported by its name and the folder searched.
    """
    path = package_config_path(filename) if '::' in filename else filename
    try:
        return Config.fromfile(path)
    except FileNotFoundError as err:
        missing = _MISSING.search(str(err))
        root = osp.realpath(CONFIG_DIR) + os.sep
        if missing is None or not osp.realpath(missing['path']).startswith(root):
            raise
        rel = osp.relpath(osp.realpath(missing['path']), root)
        raise FileNotFoundError(
            f'{filename}: base config {PREFIX}{rel} not found: no such file in '
            f'{CONFIG_DIR} (its folders: {", ".join(_folders())})') from None


def _folders() -> list:
    """The sub-folders of kd_det's configs, or a hint when the folder is missing."""
    if not osp.isdir(CONFIG_DIR):
        return ['none: the folder is missing; reinstall kd_det (pip install -e . '
                'in a clone, or its wheel)']
    return sorted(d for d in os.listdir(CONFIG_DIR) if osp.isdir(osp.join(CONFIG_DIR, d)))
