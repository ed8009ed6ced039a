"""The box AP mmdet's model zoo reports for a teacher, from the installed metafiles."""
import glob
import os.path as osp
from typing import Iterator, Optional, Union

import yaml


def metafiles() -> list:
    """The installed mmdet's ``.mim/configs/*/metafile.yml`` files."""
    import mmdet
    root = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
    return sorted(glob.glob(osp.join(root, '*', 'metafile.yml')))


def zoo_models(files: Optional[list] = None) -> Iterator[dict]:
    """``dict(name, config, weights, box_ap)`` per model of the metafiles with a box AP."""
    for path in metafiles() if files is None else files:
        with open(path) as f:
            meta = yaml.safe_load(f) or {}
        # a metafile is {Collections, Models} or, in a few folders, the list of models
        for model in meta.get('Models') or [] if isinstance(meta, dict) else meta:
            results = model.get('Results') or []
            results = [results] if isinstance(results, dict) else results
            box_ap = next((r['Metrics']['box AP'] for r in results
                           if 'box AP' in (r.get('Metrics') or {})), None)
            if box_ap is not None:
                yield dict(name=model.get('Name'), config=model.get('Config', ''),
                           weights=model.get('Weights', ''), box_ap=float(box_ap),
                           metafile=path)


def zoo_entry(teacher_ckpt: Optional[str], teacher_config: Union[str, dict, None],
              files: Optional[list] = None) -> Optional[dict]:
    """The zoo model of this teacher, or None: matched first by the checkpoint's file name
    (a zoo URL, or a local copy of its file), then by the config's file name. The entry
    gains ``matched_by`` ('checkpoint' or 'config')."""
    ckpt_name = osp.basename(str(teacher_ckpt or ''))
    config_name = osp.basename(teacher_config.split('::')[-1]) \
        if isinstance(teacher_config, str) else ''
    by_config = None
    for model in zoo_models(files):
        if ckpt_name and osp.basename(model['weights']) == ckpt_name:
            return dict(model, matched_by='checkpoint')
        if by_config is None and config_name and osp.basename(model['config']) == config_name:
            by_config = dict(model, matched_by='config')
    return by_config
