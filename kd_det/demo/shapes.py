"""One image of the synthetic shapes dataset (:mod:`kd_det.demo.synthetic_coco`) and its
COCO annotations.

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
"""
from typing import List, Tuple

import cv2
import numpy as np

CLASSES = ('circle', 'ring', 'square', 'triangle', 'hexagon', 'star', 'cross')
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
