"""Deterministic synthetic COCO-format shape dataset for the embedded demo.

Each image shows 2-8 shapes of :data:`CLASSES` on a textured background
(gradient, smooth noise, stripes or flat colour) with clutter underneath
(lines, scribbles, arcs, irregular blobs, speckles), a few thin lines on
top, mild blur and sensor noise. Object colour and texture are sampled
independently of the class, so a detector must learn shape. Object sizes
are log-uniform from ``object_size[0]`` to ``object_size[1]`` pixels
(circumscribed diameter), with random rotation and a mild aspect change.

Occlusion: objects are drawn in order, later ones on top. A new object is
placed only where it leaves every earlier object at least half of its own
area visible (otherwise its position is resampled, and after a few failures
the object is left out), so every drawn object is annotated and no object
is hidden unlabelled. Annotations describe the *visible* region, like
COCO: the object's own pixels less those within one pixel of a later
object and less specks under a tenth of its largest visible piece (slivers
along an occluder's edge would otherwise stretch the box). ``bbox`` is the
tight box of that region (``[x, y, w, h]``, pixel inclusive, as
``pycocotools.mask.toBbox`` computes it), ``area`` its pixel count and
``segmentation`` its outer contour polygons through the centres of the
border pixels (so slightly inside the box; a ring's hole is not encoded,
so its polygon area exceeds ``area``).

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

CLASSES = ('circle', 'ring', 'square', 'triangle', 'hexagon', 'star', 'cross')
FORMAT_VERSION = 1
META_FILE = 'synthetic_meta.json'

_SPLITS = ('train', 'val', 'tune')
_SHIFT = 4  # fractional bits of the sub-pixel polygon coordinates
_MIN_VISIBLE = 0.5  # fraction of an object that must stay visible
_PLACE_TRIES = 10
_MIN_CONTRAST = 100.0  # mean colour distance of an object to what it covers


def _regular_polygon(n: int,
                     radius: float = 1.0,
                     phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def _unit_shape(
        name: str,
        rng: np.random.Generator) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Filled and hole polygons of a class, circumradius about 1."""
    if name == 'circle':
        return [_regular_polygon(48)], []
    if name == 'ring':
        hole = _regular_polygon(48, rng.uniform(0.45, 0.7))
        return [_regular_polygon(48)], [hole]
    if name == 'square':
        return [_regular_polygon(4, phase=np.pi / 4)], []
    if name == 'triangle':
        return [_regular_polygon(3) + rng.uniform(-0.08, 0.08, (3, 2))], []
    if name == 'hexagon':
        return [_regular_polygon(6)], []
    if name == 'star':
        radii = np.tile([1.0, rng.uniform(0.38, 0.5)], 5)
        return [_regular_polygon(10) * radii[:, None]], []
    if name == 'cross':
        w = rng.uniform(0.22, 0.36)
        quarter = np.array([[w, -1], [w, -w], [1, -w]])
        rot90 = np.array([[0, -1], [1, 0]])
        arms = [quarter @ np.linalg.matrix_power(rot90, k).T for k in range(4)]
        return [np.concatenate(arms)], []
    raise KeyError(f'unknown shape {name!r}')


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Linear ramp in [0, 1] along a random direction, shape (h, w, 1)."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t -= t.min()
    return (t / max(float(t.max()), 1.0))[..., None]


def _stripes(rng: np.random.Generator, h: int, w: int,
             period: Tuple[float, float]) -> np.ndarray:
    """Soft stripes in [0, 1] of random period and angle, shape (h, w, 1)."""
    angle = rng.uniform(0, np.pi)
    freq = 2 * np.pi / rng.uniform(*period)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) * freq
    return (0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi)))[..., None]


def _texture(rng: np.random.Generator, h: int, w: int, kind: int,
             period: Tuple[float, float]) -> np.ndarray:
    """Float32 (h, w, 3) texture: flat, ramp, stripes or smooth noise."""
    c1, c2 = _random_color(rng), _random_color(rng)
    if kind == 0:
        return np.full((h, w, 3), c1, np.float32)
    if kind == 1:
        t = _ramp(rng, h, w)
    elif kind == 2:
        t = _stripes(rng, h, w, period)
    else:
        grid = rng.uniform(0, 1, (rng.integers(3, 8), rng.integers(3, 8)))
        t = cv2.resize(
            grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t


def _draw_clutter(img: np.ndarray, rng: np.random.Generator,
                  sizes: Tuple[float, float]) -> None:
    """Draw distractors that belong to no class: lines, scribbles, arcs,
    irregular blobs and speckles."""
    h, w = img.shape[:2]
    for _ in range(rng.integers(2, 9)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(5)
        if kind == 0:
            p1, p2 = rng.integers(0, [w, h], (2, 2))
            cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), color,
                     int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            steps = rng.normal(0, max(h, w) / 8, (rng.integers(3, 7), 2))
            pts = rng.integers(0, [w, h], 2) + np.cumsum(steps, axis=0)
            cv2.polylines(img, [pts.astype(np.int32)], False, color,
                          int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 2:
            center = tuple(int(v) for v in rng.integers(0, [w, h]))
            axes = tuple(int(v) for v in rng.uniform(*sizes, 2) / 2)
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), start,
                        start + float(rng.uniform(60, 220)), color,
                        int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 3:
            t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            wobble = sum(
                rng.uniform(0.12, 0.25) * np.sin(k * t + rng.uniform(0, 6.3))
                for k in (2, 3, 5))
            radius = rng.uniform(sizes[0], sizes[1] * 0.6) / 2
            pts = np.stack([np.cos(t), np.sin(t)], 1) * \
                (radius * (1 + wobble))[:, None]
            pts += rng.uniform(0, [w, h])
            cv2.fillPoly(img, [np.round(pts * (1 << _SHIFT)).astype(np.int32)],
                         color, cv2.LINE_AA, _SHIFT)
        else:
            for x, y in rng.integers(0, [w, h], (rng.integers(3, 12), 2)):
                cv2.circle(img, (int(x), int(y)), int(rng.integers(1, 3)),
                           color, -1, cv2.LINE_AA)


class _Canvas:
    """An image under construction and the visibility of its objects."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.owner = np.full(img.shape[:2], -1, dtype=np.int16)
        self.labels: List[int] = []
        self.crops: List[Tuple[slice, slice]] = []
        self.full_area: List[int] = []
        self.visible: List[int] = []

    def try_place(self, label: int, diameter: float,
                  rng: np.random.Generator) -> bool:
        """Draw one object where it leaves earlier objects visible enough."""
        h, w = self.owner.shape
        filled, holes = _unit_shape(CLASSES[label], rng)
        aspect = rng.uniform(0.85, 1.15)
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        linear = np.diag([aspect**0.5, aspect**-0.5]) * diameter / 2
        linear = linear @ np.array([[cos, sin], [-sin, cos]])
        filled = [p @ linear for p in filled]
        holes = [p @ linear for p in holes]
        lo = np.min([p.min(0) for p in filled], axis=0)
        hi = np.max([p.max(0) for p in filled], axis=0)
        for _ in range(_PLACE_TRIES):
            center = rng.uniform(1 - lo, [w - 2, h - 2] - hi)
            x0, y0 = np.floor(center + lo).astype(int) - 1
            x1, y1 = np.ceil(center + hi).astype(int) + 2
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
            offset = center - [x0, y0]
            for polys, value in ((filled, 255), (holes, 0)):
                if polys:
                    fixed = [
                        np.round((p + offset) * (1 << _SHIFT)).astype(np.int32)
                        for p in polys
                    ]
                    cv2.fillPoly(alpha, fixed, value, cv2.LINE_AA, _SHIFT)
            mask = alpha >= 128
            owner = self.owner[y0:y1, x0:x1]
            covered = np.bincount(
                owner[mask] + 1, minlength=len(self.labels) + 1)[1:]
            remaining = np.asarray(self.visible) - covered
            if mask.any() and np.all(remaining >= _MIN_VISIBLE *
                                     np.asarray(self.full_area)):
                break
        else:
            return False
        self._paint(self.img[y0:y1, x0:x1], alpha, mask, rng)
        owner[mask] = len(self.labels)
        self.visible = list(map(int, remaining)) + [int(mask.sum())]
        self.full_area.append(int(mask.sum()))
        self.labels.append(label)
        self.crops.append((slice(y0, y1), slice(x0, x1)))
        return True

    @staticmethod
    def _paint(crop: np.ndarray, alpha: np.ndarray, mask: np.ndarray,
               rng: np.random.Generator) -> None:
        """Blend a class-independent texture into ``crop`` through alpha,
        contrasting with what lies beneath; sometimes add an inner border."""
        h, w = alpha.shape
        under = crop[mask].astype(np.float32)
        kind = rng.integers(4)
        for _ in range(10):  # the last try stands if none contrasts
            tex = _texture(rng, h, w, kind, (2.5, 7.0))
            diff = np.linalg.norm(tex[mask] - under, axis=1).mean()
            if diff >= _MIN_CONTRAST:
                break
        if rng.random() < 0.3:
            inner = cv2.erode(
                mask.astype(np.uint8),
                np.ones((3, 3), np.uint8),
                iterations=int(rng.integers(1, 3))).astype(bool)
            tex[mask & ~inner] = _random_color(rng)
        a = alpha[..., None].astype(np.float32) / 255
        crop[:] = np.round(crop * (1 - a) + tex * a).astype(np.uint8)

    def visible_region(self, k: int) -> np.ndarray:
        """Uint8 mask of object ``k`` within its crop, without the pixels
        next to a later object's edge and without specks smaller than a
        tenth of its largest visible piece (both unreliable to annotate)."""
        crop = self.crops[k]
        owner = self.owner[crop]
        mask = (owner == k).astype(np.uint8)
        near_later = cv2.dilate((owner > k).astype(np.uint8),
                                np.ones((3, 3), np.uint8))
        clean = mask & (1 - near_later)
        num, comps, stats, _ = cv2.connectedComponentsWithStats(clean)
        if num == 1:  # nothing survives: keep the raw visible pixels
            return mask
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.flatnonzero(areas >= 0.1 * areas.max())
        return np.isin(comps, keep).astype(np.uint8)

    def annotations(self) -> List[dict]:
        """COCO annotation stubs of the visible parts, in drawing order."""
        anns = []
        for k, (label, crop) in enumerate(zip(self.labels, self.crops)):
            mask = self.visible_region(k)
            ys, xs = np.nonzero(mask)
            x0, y0 = crop[1].start, crop[0].start
            contours, _ = cv2.findContours(
                mask,
                cv2.RETR_EXTERNAL,
                cv2.CHAIN_APPROX_SIMPLE,
                offset=(x0, y0))
            anns.append(
                dict(
                    category_id=label + 1,
                    bbox=[
                        float(x0 + xs.min()),
                        float(y0 + ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1)
                    ],
                    area=float(len(xs)),
                    iscrowd=0,
                    # contour points are pixel indices; +0.5 moves them to
                    # pixel centres in COCO's continuous coordinates
                    segmentation=[(c.reshape(-1) + 0.5).tolist()
                                  for c in contours if len(c) >= 3]))
        return anns


def render_image(
        rng: np.random.Generator, image_size: Tuple[int, int],
        objects_per_image: Tuple[int, int],
        object_size: Tuple[float, float]) -> Tuple[np.ndarray, List[dict]]:
    """Render one BGR uint8 image and its annotations (no ids yet)."""
    h, w = image_size
    # textures are convex blends of colours, already within [0, 255]
    img = _texture(rng, h, w, int(rng.integers(4)),
                   (6.0, 24.0)).astype(np.uint8)
    _draw_clutter(img, rng, object_size)
    canvas = _Canvas(img)
    log_lo, log_hi = np.log(object_size)
    for _ in range(
            rng.integers(objects_per_image[0], objects_per_image[1] + 1)):
        canvas.try_place(
            int(rng.integers(len(CLASSES))),
            float(np.exp(rng.uniform(log_lo, log_hi))), rng)
    for _ in range(rng.binomial(2, 0.3)):
        p1, p2 = rng.integers(0, [w, h], (2, 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(img, tuple(map(int, p1)), tuple(map(int, p2)), color, 1,
                 cv2.LINE_AA)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    noisy = rng.standard_normal(img.shape, dtype=np.float32)
    noisy *= rng.uniform(2, 8)
    noisy += img
    img = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)
    return img, canvas.annotations()


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
