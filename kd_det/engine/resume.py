"""``--resume`` without a path: the newest checkpoint in the work dir that loads."""
import glob
import logging
import os.path as osp
import re
from typing import List, Optional

from mmengine.logging import print_log

from kd_det.checkpoint import CheckpointError, safe_load

_NUMBERED = re.compile(r'(?:epoch|iter)_(\d+)\.pth')


def _numbered_checkpoints(directory: str) -> List[str]:
    """``epoch_*.pth`` and ``iter_*.pth`` in ``directory``, highest number first."""
    found = []
    for path in glob.glob(osp.join(glob.escape(directory), '*_*.pth')):
        match = _NUMBERED.fullmatch(osp.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` (without a path) should resume from, or None.

    Candidates, in order: the checkpoint ``work_dir/last_checkpoint`` names
    (what mmengine resumes from), then every ``epoch_*.pth`` and ``iter_*.pth``
    in ``work_dir`` and in that checkpoint's folder, highest number first. The
    first one that :func:`kd_det.checkpoint.safe_load` reads is returned; each
    one skipped (missing, truncated, unreadable) is logged as a warning naming
    the file. Temporary files of unfinished saves are never candidates. A
    remote path in ``last_checkpoint`` (``s3://...``) is returned unchecked.
    """
    last_file = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.isfile(last_file):
        with open(last_file) as f:
            named = f.read().strip() or None
    if named is not None and '://' in named:
        return named
    folders = [work_dir] if named is None else [work_dir, osp.dirname(named)]
    candidates = [named] if named is not None else []
    for folder in dict.fromkeys(folders):
        candidates += _numbered_checkpoints(folder)
    for path in dict.fromkeys(candidates):
        try:
            safe_load(path, map_location='cpu')
        except (FileNotFoundError, CheckpointError) as err:
            print_log(f'Auto resume: skipping {path}: {err}', logger='current',
                      level=logging.WARNING)
            continue
        if path == named:
            print_log(f'Auto resume: resuming from {path}', logger='current')
        else:
            why = f'{last_file} names {named}' if named else f'{last_file} is missing'
            print_log(f'Auto resume: {why}; resuming from {path}, the newest checkpoint '
                      'that loads', logger='current', level=logging.WARNING)
        return path
    return None
