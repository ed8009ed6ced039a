"""Deterministic synthetic COCO-format shape dataset for the embedded demo. What one image
shows and how it is annotated: :mod:`kd_det.demo.shapes`.

Splits: ``train``, ``val`` (the reported numbers) and ``tune`` (for
choosing hyper-parameters without looking at val), all from the same
distribution. Every image is drawn from its own random stream, keyed by
``(seed, split, index)``: the same seed gives byte-identical annotation
files and identical pixels (PNG), and no two splits share a stream. Image
ids are unique across splits (train ``1..N``, val ``N+1..N+M``, tune
``N+M+1..N+M+T``) and file names are the zero-padded ids. Adding the tune
split left the train and val files byte-identical to the earlier two-split
datasets.

The dataset is written to a temporary sibling directory and moved into
place at the end, together with ``synthetic_meta.json`` (the parameters and
a SHA-256 of all files). A later call with the same parameters reuses a
verified dataset; a directory holding anything else is never overwritten.
"""
import argparse
import hashlib
import json
import os
import os.path as osp
import shutil
import tempfile
import time
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ..fileio import current_umask
from .shapes import CLASSES, render_image

FORMAT_VERSION = 1
META_FILE = 'synthetic_meta.json'

_SPLITS = ('train', 'val', 'tune')


def _write_split(root: str, split: str, first_id: int, num: int,
                 params: dict) -> Tuple[str, List[int]]:
    """Render one split into ``root``; return its annotation file and the
    instance count per class."""
    os.makedirs(osp.join(root, split))
    images, annotations = [], []
    for index in range(num):
        rng = np.random.default_rng(
            [params['seed'], _SPLITS.index(split), index])
        img, anns = render_image(rng, tuple(params['image_size']),
                                 tuple(params['objects_per_image']),
                                 tuple(params['object_size']))
        image_id = first_id + index
        file_name = f'{image_id:06d}.png'
        cv2.imwrite(osp.join(root, split, file_name), img)
        images.append(
            dict(
                id=image_id,
                file_name=file_name,
                height=img.shape[0],
                width=img.shape[1]))
        for ann in anns:
            annotations.append(
                dict(id=len(annotations) + 1, image_id=image_id, **ann))
    coco = dict(
        info=dict(
            description=f'kd_det synthetic shapes ({split})',
            version=str(FORMAT_VERSION)),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(CLASSES)
        ])
    ann_file = osp.join('annotations', f'instances_{split}.json')
    with open(osp.join(root, ann_file), 'w') as f:
        f.write(json.dumps(coco, separators=(',', ':')))
    counts = np.bincount([a['category_id'] - 1 for a in annotations],
                         minlength=len(CLASSES))
    return ann_file, counts.tolist()


def _content_hash(root: str) -> str:
    """SHA-256 over the relative paths and bytes of the dataset files."""
    digest = hashlib.sha256()
    for sub in ('annotations', ) + _SPLITS:
        for name in sorted(os.listdir(osp.join(root, sub))):
            digest.update(f'{sub}/{name}\n'.encode())
            with open(osp.join(root, sub, name), 'rb') as f:
                digest.update(f.read())
    return digest.hexdigest()


def _result(root: str, meta: dict, reused: bool) -> dict:
    result = dict(root=root, classes=CLASSES, reused=reused)
    for split in _SPLITS:
        info = meta['splits'][split]
        result[f'{split}_ann_file'] = osp.join(root, info['ann_file'])
        result[f'{split}_img_dir'] = osp.join(root, split)
        result[f'num_{split}_images'] = info['num_images']
        result[f'num_{split}_instances'] = sum(info['instances_per_class'])
        result[f'{split}_instances_per_class'] = dict(
            zip(CLASSES, info['instances_per_class']))
    return result


def _check_existing(root: str, params: dict) -> Optional[dict]:
    """Return the meta of a reusable dataset at ``root``, None if ``root``
    is missing or empty, and raise if it holds anything else."""
    if not osp.exists(root):
        return None
    if not osp.isdir(root):
        raise FileExistsError(f'{root} exists and is not a directory')
    if not os.listdir(root):
        return None
    meta_path = osp.join(root, META_FILE)
    if not osp.isfile(meta_path):
        raise FileExistsError(
            f'{root} is not empty and holds no {META_FILE}; refusing to '
            'write a synthetic dataset over it. Pass an empty or new '
            'directory.')
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get('params') != params:
        raise FileExistsError(
            f'{root} holds a synthetic dataset made with other parameters '
            f'({meta.get("params")}, requested {params}); refusing to '
            'overwrite it. Use another directory or delete it yourself.')
    if _content_hash(root) != meta.get('content_sha256'):
        raise FileExistsError(
            f'{root} holds a synthetic dataset whose files no longer match '
            f'the hash in {META_FILE}; refusing to reuse or overwrite it. '
            'Delete it yourself to regenerate.')
    return meta


def generate_dataset(
        out_dir: str,
        num_train: int = 600,
        num_val: int = 150,
        num_tune: int = 150,
        image_size: Tuple[int, int] = (192, 192),
        seed: int = 0,
        objects_per_image: Tuple[int, int] = (2, 8),
        object_size: Optional[Tuple[float, float]] = None) -> dict:
    """Generate (or reuse) the synthetic shape dataset in ``out_dir``.

    Args:
        out_dir (str): Dataset root; gets ``train/``, ``val/``, ``tune/``,
            ``annotations/instances_{train,val,tune}.json`` and
            ``META_FILE``.
        num_train (int): Number of training images. Defaults to 600.
        num_val (int): Number of validation images. Defaults to 150.
        num_tune (int): Number of tuning images. Defaults to 150.
        image_size (tuple[int, int]): Image ``(height, width)``.
            Defaults to (192, 192).
        seed (int): Seed of all random streams. Defaults to 0.
        objects_per_image (tuple[int, int]): Inclusive range of objects
            tried per image; an object that finds no place is left out.
            Defaults to (2, 8).
        object_size (tuple[float, float], optional): Range of object
            diameters in pixels, sampled log-uniformly. Defaults to
            ``(10, min(image_size) / 2)``.

    Returns:
        dict: ``root``, ``classes``, ``reused``, and per split ``{split}_
        ann_file``, ``{split}_img_dir``, ``num_{split}_images``,
        ``num_{split}_instances`` and ``{split}_instances_per_class``.
    """
    h, w = (int(v) for v in image_size)
    if object_size is None:
        object_size = (10.0, min(h, w) / 2)
    lo_obj, hi_obj = (float(v) for v in object_size)
    if min(num_train, num_val, num_tune) < 1:
        raise ValueError(f'num_train, num_val and num_tune must be positive, '
                         f'got {num_train}, {num_val}, {num_tune}')
    if seed < 0:
        raise ValueError('seed must be non-negative')
    if not 1 <= objects_per_image[0] <= objects_per_image[1]:
        raise ValueError(f'bad objects_per_image {objects_per_image}')
    if not 4 <= lo_obj <= hi_obj <= min(h, w) - 4:
        raise ValueError(f'bad object_size {object_size} for {image_size}')
    params = dict(
        format_version=FORMAT_VERSION,
        num_train=int(num_train),
        num_val=int(num_val),
        num_tune=int(num_tune),
        image_size=[h, w],
        seed=int(seed),
        objects_per_image=[int(v) for v in objects_per_image],
        object_size=[lo_obj, hi_obj])
    root = osp.abspath(out_dir)
    meta = _check_existing(root, params)
    if meta is not None:
        return _result(root, meta, reused=True)

    parent, name = osp.split(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{name}.partial-', dir=parent)
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private
    try:
        os.makedirs(osp.join(tmp, 'annotations'))
        splits = {}
        first_ids = dict(train=1, val=num_train + 1,
                         tune=num_train + num_val + 1)
        for split in _SPLITS:
            ann_file, counts = _write_split(tmp, split, first_ids[split],
                                            params[f'num_{split}'], params)
            splits[split] = dict(
                ann_file=ann_file,
                num_images=params[f'num_{split}'],
                instances_per_class=counts)
        meta = dict(
            params=params,
            classes=list(CLASSES),
            splits=splits,
            content_sha256=_content_hash(tmp))
        with open(osp.join(tmp, META_FILE), 'w') as f:
            json.dump(meta, f, indent=2)
        # an empty ``root`` is replaced atomically; a non-empty one is not
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _result(root, meta, reused=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate the synthetic COCO-format shape dataset.')
    parser.add_argument('out_dir', help='dataset root directory')
    parser.add_argument('--num-train', type=int, default=600)
    parser.add_argument('--num-val', type=int, default=150)
    parser.add_argument('--num-tune', type=int, default=150)
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        default=[192, 192],
        metavar=('H', 'W'),
        help='image height and width')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    result = generate_dataset(
        args.out_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        num_tune=args.num_tune,
        image_size=tuple(args.size),
        seed=args.seed)
    action = 'reused' if result['reused'] else 'generated'
    print(f'{action} {result["root"]} in '
          f'{time.perf_counter() - start:.1f}s')
    for split in _SPLITS:
        per_class = ', '.join(
            f'{k}={v}'
            for k, v in result[f'{split}_instances_per_class'].items())
        print(f'  {split}: {result[f"num_{split}_images"]} images, '
              f'{result[f"num_{split}_instances"]} instances ({per_class})')
        print(f'    images: {result[f"{split}_img_dir"]}')
        print(f'    annotations: {result[f"{split}_ann_file"]}')


if __name__ == '__main__':
    main()
