"""Where a student's features match its teacher's: per-level energy, SSIM and patch-CKA maps.

Pure functions on feature maps (N, C, H, W):

* :func:`feature_energy`: mean over channels of the squared activations, (N, H, W).
* :func:`ssim_map`: local SSIM as :class:`~kd_det.losses.SSIMLoss` computes it (min-max
  normalised features, Gaussian window, reflect padding), averaged over channels, (N, H, W).
* :func:`patch_cka_map`: debiased linear CKA of each tile, the tile's pixels being the samples
  and the channels the features, broadcast over the tile's pixels, (N, H, W).

:func:`image_similarity_maps` runs a built :class:`~kd_det.models.FeatureDistillDetector` on one
image and returns these maps per level, cropped to the image (no padding) and upsampled to the
resized image the model sees; :func:`plot_similarity` draws them.
"""
import copy
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import mmcv
import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import Compose
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmdet.registry import MODELS
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_fitting_weights, read_state_dict
from ..losses.ssim import SSIMLoss, minmax_normalize
from ..losses.ssim import ssim_map as channel_ssim_map
from ..models.distill_sources import StudentTaps
from .random_weights import quiet_init_weights

DISTILL_TYPE = 'FeatureDistillDetector'
#: the prefixes of a distillation checkpoint's keys that the maps need
STUDENT_PREFIXES = ('student.', 'connectors.')
MIN_PATCH = 3
# figure layout: one row per level, these columns, inches per panel, title band, dpi
COLUMNS = ('image', 'teacher energy', 'student energy', 'SSIM', 'CKA')
PANEL_SIZE = (3.2, 2.8)
TITLE_HEIGHT = 0.8
DPI = 100


# ------------------------------------------------------------------ pure functions
def feature_energy(feats: Tensor) -> Tensor:
    """Mean over channels of the squared activations: (N, C, H, W) -> (N, H, W)."""
    return feats.float().pow(2).mean(1)


def ssim_map(student: Tensor, teacher: Tensor, window_size: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03, normalize: Optional[str] = 'channel',
             eps: float = 1e-6) -> Tensor:
    """Local SSIM of two feature maps (N, C, H, W) -> (N, H, W), the mean over channels.

    Both are min-max normalised as ``SSIMLoss(normalize=...)`` does (default per image and
    channel), then each channel gets the Gaussian-window SSIM map with reflect padding
    (``padding='same'``). Its mean is ``1 - 2 * SSIMLoss(loss_weight=1)`` of the same pair.
    """
    student, teacher = student.float(), teacher.float()
    if normalize is not None:
        student = minmax_normalize(student, normalize, eps)
        teacher = minmax_normalize(teacher, normalize, eps)
    return channel_ssim_map(student, teacher, window_size, sigma, k1, k2, 'same').mean(1)


def tile_edges(size: int, patch_size: int) -> List[int]:
    """Edges of ``max(1, size // patch_size)`` near-equal tiles covering ``[0, size)``: each
    ``patch_size`` to ``2 * patch_size - 1`` long, or ``size`` when that is shorter."""
    num = max(1, size // patch_size)
    return [i * size // num for i in range(num + 1)]


def _debiased_hsic(gram_x: Tensor, gram_y: Tensor) -> Tensor:
    """Unbiased HSIC estimator (Song et al. 2012) of Gram matrices (..., n, n), n >= 4."""
    n = gram_x.shape[-1]
    gram_x = gram_x - torch.diag_embed(gram_x.diagonal(dim1=-2, dim2=-1))
    gram_y = gram_y - torch.diag_embed(gram_y.diagonal(dim1=-2, dim2=-1))
    sum_x, sum_y = gram_x.sum(-1), gram_y.sum(-1)
    hsic = ((gram_x * gram_y).sum((-2, -1))
            + sum_x.sum(-1) * sum_y.sum(-1) / ((n - 1) * (n - 2))
            - 2 * (sum_x * sum_y).sum(-1) / (n - 2))
    return hsic / (n * (n - 3))


def debiased_cka(x: Tensor, y: Tensor) -> Tensor:
    """Debiased linear CKA of samples x (..., n, c) and y (..., n, d) -> (...).

    ``HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L))`` with K = x x^T, L = y y^T and HSIC_u the
    unbiased estimator (Nguyen et al. 2021). Plain linear CKA is biased towards 1 when n is not
    much larger than c (9 unrelated random samples of 64 channels score ~0.88); this one is ~0
    for unrelated features at any n and 1 for identical ones. NaN where undefined (n < 4, or a
    feature set with no spread).
    """
    if x.shape[-2] < 4:
        return x.new_full(x.shape[:-2], float('nan'))
    x, y = x.double(), y.double()
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-30)  # CKA is scale invariant
    y = y / y.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    gram_x, gram_y = x @ x.mT, y @ y.mT
    hsic_xx, hsic_yy = _debiased_hsic(gram_x, gram_x), _debiased_hsic(gram_y, gram_y)
    defined = (hsic_xx > 1e-12) & (hsic_yy > 1e-12)
    cka = _debiased_hsic(gram_x, gram_y) / (hsic_xx * hsic_yy).clamp_min(1e-24).sqrt()
    return torch.where(defined, cka, float('nan')).float()


def patch_cka_map(student: Tensor, teacher: Tensor, patch_size: int = 16) -> Tensor:
    """Debiased linear CKA of each tile of two feature maps (N, C, H, W) -> (N, H, W).

    The map is cut into ``max(1, H // p) x max(1, W // p)`` near-equal tiles of ``p`` to
    ``2p - 1`` pixels a side (see :func:`tile_edges`). In a tile with P pixels, the student's
    and the teacher's feature vectors (P, C) are compared with :func:`debiased_cka`: pixels
    are the samples, channels the features. 1 when the tile's pixels relate to each other in
    the same way in both (features equal up to a rotation, a scale and an offset of the
    channels), ~0 for unrelated features, whatever P. Every pixel of a tile gets its value;
    NaN where undefined.
    """
    n, _, h, w = student.shape
    out = student.new_full((n, h, w), float('nan'), dtype=torch.float32)
    rows, cols = tile_edges(h, patch_size), tile_edges(w, patch_size)
    for y0, y1 in zip(rows[:-1], rows[1:]):
        for x0, x1 in zip(cols[:-1], cols[1:]):
            cka = debiased_cka(student[:, :, y0:y1, x0:x1].flatten(2).mT,
                               teacher[:, :, y0:y1, x0:x1].flatten(2).mT)
            out[:, y0:y1, x0:x1] = cka[:, None, None]
    return out


def level_patch_size(height: int, width: int, patch_size: int = 16) -> int:
    """The CKA tile size of a level: ``patch_size``, smaller on levels under 2 patches a side.

    ``min(patch_size, max(MIN_PATCH, min(height, width) // 2))``: 2 tiles along the short side
    of a small level, as long as tiles keep ``MIN_PATCH`` (3) pixels a side, i.e. >= 9 samples.
    """
    return min(patch_size, max(MIN_PATCH, min(height, width) // 2))


# ------------------------------------------------------------------ model
@dataclass
class LevelMaps:
    """The maps of one feature level, each (h, w) at the resized image's size."""

    level: int
    stride: int
    feat_size: Tuple[int, int]  # the level's size inside the image (padding cropped)
    patch_size: int  # CKA tiles are patch_size to 2 * patch_size - 1 feature pixels a side
    tile_rows: List[int]  # CKA tile edges in image pixels
    tile_cols: List[int]
    teacher_energy: np.ndarray
    student_energy: np.ndarray
    ssim: np.ndarray
    cka: np.ndarray


@dataclass
class SimilarityMaps:
    """The resized image the model sees, (h, w, 3) RGB uint8, and its maps per level."""

    image: np.ndarray
    levels: List[LevelMaps]


def build_distill_model(cfg: Config, checkpoint: Optional[str] = None,
                        device: str = 'cpu', seed: int = 0) -> nn.Module:
    """Build the config's FeatureDistillDetector (its teacher from ``model.teacher_ckpt``).

    The student and connectors come from ``checkpoint`` (a distillation checkpoint), or are
    initialised as training starts (``init_weights()`` under ``seed``) when it is None.

    Raises:
        ValueError: the config's model is not a FeatureDistillDetector.
        FileNotFoundError / CheckpointError: a checkpoint is missing or does not fit.
    """
    model_type = cfg.model.get('type')
    if model_type != DISTILL_TYPE:
        raise ValueError(f'not a kd_det distillation config: its model.type is {model_type!r}, '
                         f'expected {DISTILL_TYPE!r}')
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if checkpoint is None:
        torch.manual_seed(seed)
        quiet_init_weights(model)
    else:
        load_distill_checkpoint(model, checkpoint)
    return model.to(device).eval()


def load_distill_checkpoint(model: nn.Module, filename: str) -> None:
    """Load the ``student.*`` and ``connectors.*`` weights of a distillation checkpoint.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, no student weights, or keys/shapes that do not fit.
    """
    state = read_state_dict(filename)
    if not any(k.startswith('student.') for k in state):
        raise CheckpointError(f'{filename!r} has no student.* weights: not a kd_det '
                              'distillation checkpoint (from tools/train.py)')
    load_fitting_weights(model, state, repr(filename), "the config's student/connectors",
                         prefixes=STUDENT_PREFIXES)


@torch.no_grad()
def distill_features(model: nn.Module, inputs: Tensor) -> Tuple[Dict[int, Tensor],
                                                                 Dict[int, Tensor]]:
    """``({student level: student features}, {student level: teacher features})`` for every
    paired level of the model's ``feature_source``, as the distillation losses compare them
    (the student through its connectors, the teacher level of the same stride)."""
    source = model.feature_source
    run = model.student.backbone if source == 'backbone' else model.student.extract_feat
    with StudentTaps(model.student, {source} & {'taps'}, model.taps) as taps:
        feats = run(inputs)
    feats = taps.get('taps') if source == 'taps' else feats
    student, teacher = model.paired_features(
        list(feats), model.teacher_outputs(inputs, features_only=True)[source], source)
    return student, teacher


def ssim_settings(model: nn.Module) -> Dict:
    """The options of the model's first SSIMLoss, for :func:`ssim_map` (defaults if none)."""
    for loss in model.distill_losses.values():
        if isinstance(loss, SSIMLoss):
            return dict(window_size=loss.window_size, sigma=loss.sigma, k1=loss.k1, k2=loss.k2,
                        normalize=loss.normalize, eps=loss.eps)
    return {}


def _to_image(level_map: Tensor, stride: int, image_size: Tuple[int, int],
              mode: str) -> np.ndarray:
    """(1, h', w') level map -> (h, w) image map: each feature pixel covers stride x stride
    image pixels, and the part of the last ones beyond the image is cropped."""
    size = (level_map.shape[1] * stride, level_map.shape[2] * stride)
    kwargs = dict(align_corners=False) if mode == 'bilinear' else {}
    up = F.interpolate(level_map[None].float(), size=size, mode=mode, **kwargs)
    return up[0, 0, :image_size[0], :image_size[1]].cpu().numpy()


def image_similarity_maps(model: nn.Module, image_path: str, pipeline: Sequence[dict],
                          levels: Optional[Sequence[int]] = None,
                          patch_size: int = 16) -> SimilarityMaps:
    """The teacher/student maps of one image, per feature level.

    The image is read with ``mmcv.imread`` and goes through ``pipeline`` (the config's test
    pipeline, its loading step swapped for ``LoadImageFromNDArray``) and the model's data
    preprocessor, as at test time. Each level is cropped to the image (the batch's padding
    removed, ``ceil(h / stride) x ceil(w / stride)`` feature pixels), the maps are computed on
    the crop and upsampled to the resized image's size: energies and SSIM bilinearly, CKA tiles
    as blocks. CKA tiles are ``level_patch_size(...)`` feature pixels a side.

    Args:
        model: a built FeatureDistillDetector (see :func:`build_distill_model`).
        image_path: the image file.
        pipeline: the test pipeline config, starting with an image-loading transform.
        levels: the feature levels to map (default all).
        patch_size: the CKA tile size on large levels.
    """
    img = mmcv.imread(image_path)
    if img is None:
        raise ValueError(f'{image_path!r} is not a readable image')
    pipeline = copy.deepcopy(list(pipeline))
    pipeline[0] = dict(pipeline[0], type='mmdet.LoadImageFromNDArray')
    data = Compose(pipeline)(dict(img=img, img_id=0))
    batch = model.data_preprocessor(
        dict(inputs=[data['inputs']], data_samples=[data['data_samples']]), False)
    inputs = batch['inputs']
    height, width = batch['data_samples'][0].img_shape
    student, teacher = distill_features(model, inputs)
    if levels is None:
        levels = sorted(teacher)
    bad = [lvl for lvl in levels if lvl not in teacher]
    if bad:
        raise ValueError(f'levels {bad} do not exist: the model distils student levels '
                         f'{sorted(teacher)}')
    ssim_cfg = ssim_settings(model)

    maps = []
    for lvl in levels:
        stride = 2**round(math.log2(inputs.shape[2] / teacher[lvl].shape[2]))
        feat_h = min(teacher[lvl].shape[2], -(-height // stride))
        feat_w = min(teacher[lvl].shape[3], -(-width // stride))
        s = student[lvl][..., :feat_h, :feat_w]
        t = teacher[lvl][..., :feat_h, :feat_w]
        patch = level_patch_size(feat_h, feat_w, patch_size)
        maps.append(LevelMaps(
            level=lvl, stride=stride, feat_size=(feat_h, feat_w), patch_size=patch,
            tile_rows=[min(e * stride, height) for e in tile_edges(feat_h, patch)],
            tile_cols=[min(e * stride, width) for e in tile_edges(feat_w, patch)],
            teacher_energy=_to_image(feature_energy(t), stride, (height, width), 'bilinear'),
            student_energy=_to_image(feature_energy(s), stride, (height, width), 'bilinear'),
            ssim=_to_image(ssim_map(s, t, **ssim_cfg), stride, (height, width), 'bilinear'),
            cka=_to_image(patch_cka_map(s, t, patch), stride, (height, width), 'nearest')))
    image = data['inputs'].permute(1, 2, 0).numpy()[..., ::-1]  # BGR -> RGB
    return SimilarityMaps(image=np.ascontiguousarray(image), levels=maps)


# ------------------------------------------------------------------ figure
def _low(values: np.ndarray) -> float:
    """The lower end of a similarity colour bar: 0, or the lowest value if negative."""
    finite = values[np.isfinite(values)]
    return min(0.0, float(finite.min())) if finite.size else 0.0


def figure_size(num_levels: int) -> Tuple[float, float]:
    """The figure's size in inches (times :data:`DPI` in pixels)."""
    return PANEL_SIZE[0] * len(COLUMNS), PANEL_SIZE[1] * num_levels + TITLE_HEIGHT


def plot_similarity(maps: SimilarityMaps, out_file: str, title: str = '') -> None:
    """Write a PNG: one row per level, columns :data:`COLUMNS`, each map with a colour bar.

    The image column shows the level's CKA tiles. Energies have a colour bar each (teacher and
    student scales differ); SSIM and CKA span [min(0, lowest value), 1]; NaN (undefined) is grey.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = len(maps.levels)
    fig, axes = plt.subplots(rows, len(COLUMNS), figsize=figure_size(rows), squeeze=False,
                             layout='constrained')
    for ax_row, lvl in zip(axes, maps.levels):
        ax = ax_row[0]
        ax.imshow(maps.image)
        for y in lvl.tile_rows[1:-1]:
            ax.axhline(y - 0.5, color='white', lw=0.8, alpha=0.8)
        for x in lvl.tile_cols[1:-1]:
            ax.axvline(x - 0.5, color='white', lw=0.8, alpha=0.8)
        ax.set_title(f'{lvl.feat_size[0]}x{lvl.feat_size[1]} features, CKA tiles '
                     f'>={lvl.patch_size}', fontsize=9)
        ax.set_ylabel(f'level {lvl.level}\nstride {lvl.stride}', fontsize=11)
        panels = ((lvl.teacher_energy, 'teacher energy', 'inferno', None, None),
                  (lvl.student_energy, 'student energy', 'inferno', None, None),
                  (lvl.ssim, 'SSIM', 'viridis', _low(lvl.ssim), 1.0),
                  (lvl.cka, 'CKA', 'viridis', _low(lvl.cka), 1.0))
        for ax, (values, name, cmap, vmin, vmax) in zip(ax_row[1:], panels):
            cmap = plt.get_cmap(cmap).with_extremes(bad='lightgrey')
            im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation='nearest')
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            finite = values[np.isfinite(values)]
            mean = f'{finite.mean():.3g}' if finite.size else 'n/a'
            ax.set_title(f'{name} (mean {mean})', fontsize=9)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(out_file, dpi=DPI)
    plt.close(fig)
