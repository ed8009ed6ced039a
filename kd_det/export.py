"""Turn a distillation checkpoint into a plain mmdet checkpoint of its student.

    python -m kd_det.export work_dirs/RUN/epoch_24.pth student.pth [--force]

The output loads into the student's own mmdet config, e.g. with
``python -m kd_det.test STUDENT_CONFIG student.pth``.
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List, Optional

from .checkpoint import CheckpointError, safe_load
from .fileio import atomic_torch_save

STUDENT_PREFIX = 'student.'


def export_student(src: str, dst: str, overwrite: bool = False) -> Dict[str, int]:
    """Write the student's weights of distillation checkpoint ``src`` to ``dst``.

    The result has mmdet's layout (``state_dict`` without the ``student.``
    prefix, ``meta`` kept, so ``dataset_meta`` still names the classes) and no
    optimizer, connector or loss-head state. The write is atomic (a temporary
    file renamed into place) and the file gets the permissions the umask gives.

    Returns:
        counts of the student tensors kept and of the other tensors dropped.

    Raises:
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
        CheckpointError: ``src`` holds no ``student.*`` weights.
    """
    if osp.exists(dst) and not overwrite:
        raise FileExistsError(f'{dst!r} exists; refusing to overwrite it '
                              '(pass --force / overwrite=True)')
    checkpoint = safe_load(src, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f'{src!r} holds no state_dict')
    student = student_state_dict(state)
    if not student:
        raise CheckpointError(
            f'{src!r} has no {STUDENT_PREFIX!r} weights: not a kd_det distillation '
            f'checkpoint (its keys start with {sorted({k.split(".")[0] for k in state})[:5]})')
    meta = dict(checkpoint.get('meta', {}))
    meta['kd_det_exported_from'] = osp.abspath(src)
    atomic_torch_save({'state_dict': student, 'meta': meta}, dst)
    return {'kept': len(student), 'dropped': len(state) - len(student)}


def student_state_dict(state: Dict[str, object]) -> Dict[str, object]:
    """The student's weights of a distiller's ``state`` (keys ``student.*``, DDP's
    ``module.`` prefix allowed), without the prefix; empty when there are none."""
    prefixes = (STUDENT_PREFIX, 'module.' + STUDENT_PREFIX)
    return {k.split(STUDENT_PREFIX, 1)[1]: v for k, v in state.items() if k.startswith(prefixes)}


def publish_checkpoint(src: str, dst: str, half: bool = False,
                       overwrite: bool = False) -> Dict[str, int]:
    """Keep only the weights and ``meta['dataset_meta']`` of ``src`` (as mmdet's
    ``publish_model``), optionally storing floating-point tensors in float16.

    Returns:
        the number of tensors kept and the bytes written.
    """
    if osp.exists(dst) and not overwrite:
        raise FileExistsError(f'{dst!r} exists; refusing to overwrite it')
    checkpoint = safe_load(src, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {'dataset_meta': checkpoint.get('meta', {}).get('dataset_meta'),
            'published_from': osp.basename(src), 'float16': half}
    atomic_torch_save({'state_dict': state, 'meta': meta}, dst)
    return {'tensors': len(state), 'bytes': osp.getsize(dst)}


def main(argv: Optional[List[str]] = None) -> None:
    """Command line of :func:`export_student` (``python -m kd_det.export``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('checkpoint', help='distillation checkpoint (from kd_det.train)')
    parser.add_argument('out', help='output path of the student checkpoint')
    parser.add_argument('--force', action='store_true', help='overwrite OUT if it exists')
    args = parser.parse_args(argv)
    try:
        counts = export_student(args.checkpoint, args.out, overwrite=args.force)
    except (FileNotFoundError, FileExistsError, CheckpointError) as err:
        sys.exit(f'export_student: {err}')
    print(f'wrote {args.out}: {counts["kept"]} student tensors '
          f'({counts["dropped"]} connector/loss-head/other tensors dropped)')


if __name__ == '__main__':
    main()
