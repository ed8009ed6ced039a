"""SSIM feature-distillation loss (de Rijk et al., NeurIPS 2022, arXiv 2211.13133)."""
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmdet.registry import MODELS
from .utils import (as_float32_pair, check_feature_pair, check_non_negative,
                    float32_no_autocast)

# first dim flattened into the min-max statistics of each granularity
_NORMALIZE_START_DIM = {'channel': 2, 'image': 1, 'level': 0}


def gaussian_window(window_size: int, sigma: float) -> Tensor:
    """1-D Gaussian window of odd length ``window_size`` summing to one (float64)."""
    coords = torch.arange(window_size, dtype=torch.float64) - window_size // 2
    window = torch.exp(-coords.pow(2) / (2 * sigma**2))
    return window / window.sum()


def _reflect(index: Tensor, size: int) -> Tensor:
    """Fold indices into [0, size) by mirroring about the edge pixels (torch's 'reflect'),
    repeated periodically so that any padding width is defined."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index < size, index, period - index)


@lru_cache(maxsize=256)
def _blur_matrix(size: int, window_size: int, sigma: float, padding: str,
                 device: torch.device, dtype: torch.dtype) -> Optional[Tensor]:
    """Matrix B (size, out) such that ``rows @ B`` blurs ``rows`` along the last dim.

    'same': out = size, the input reflect-padded by window_size // 2 (folded into B).
    'valid': out = size - window_size + 1; None (no blur) when size < window_size.
    """
    window = gaussian_window(window_size, sigma)
    taps = torch.arange(window_size)[:, None]
    if padding == 'valid':
        if size < window_size:
            return None
        out = size - window_size + 1
        src = torch.arange(out)[None, :] + taps
    else:
        out = size
        src = _reflect(torch.arange(out)[None, :] + taps - window_size // 2, size)
    dst = torch.arange(out).expand_as(src)
    matrix = torch.zeros(size, out, dtype=torch.float64)
    matrix.index_put_((src.reshape(-1), dst.reshape(-1)),
                      window[:, None].expand_as(src).reshape(-1), accumulate=True)
    return matrix.to(device=device, dtype=dtype)


def _blur_matrices(height: int, width: int, window_size: int, sigma: float, padding: str,
                   like: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Blur matrices along H and W, on the device and in the dtype of ``like``."""
    return tuple(_blur_matrix(size, window_size, sigma, padding, like.device, like.dtype)
                 for size in (height, width))


def gaussian_blur(maps: Tensor, window_size: int = 11, sigma: float = 1.5,
                  padding: str = 'same') -> Tensor:
    """Separable Gaussian blur of ``maps`` (..., H, W) -> (..., H', W').

    Each 1-D pass is one product with a banded matrix (reflect padding folded in), which on CPU
    is several times faster than a depthwise convolution over the same maps. On CUDA, allowing
    TF32 matmuls lowers its precision.
    """
    blur_h, blur_w = _blur_matrices(*maps.shape[-2:], window_size, sigma, padding, maps)
    if blur_w is not None:
        maps = maps @ blur_w
    if blur_h is not None:
        maps = blur_h.mT @ maps
    return maps


def _gaussian_blur_adjoint(maps: Tensor, height: int, width: int, window_size: int,
                           sigma: float, padding: str) -> Tensor:
    """Adjoint of :func:`gaussian_blur` for inputs of size (height, width): (..., H', W') ->
    (..., H, W)."""
    blur_h, blur_w = _blur_matrices(height, width, window_size, sigma, padding, maps)
    if blur_w is not None:
        maps = maps @ blur_w.mT
    if blur_h is not None:
        maps = blur_h @ maps
    return maps


def _ssim_terms(x: Tensor, y: Tensor, window_size: int, sigma: float, c1: float, c2: float,
                padding: str) -> Tuple[Tensor, ...]:
    """Local statistics of SSIM = (lum_num * cs_num) / (lum_den * cs_den).

    Returns mu_x, mu_y, lum_num = 2 mu_x mu_y + C1, lum_den = mu_x^2 + mu_y^2 + C1,
    cs_num = 2 sigma_xy + C2, cs_den = sigma_x^2 + sigma_y^2 + C2. In-place only on fresh
    tensors whose values autograd does not save, so it stays differentiable.
    """
    # one blur over the five maps: the means, second moments and the cross moment
    mu_x, mu_y, e_xx, e_yy, e_xy = gaussian_blur(
        torch.stack([x, y, x * x, y * y, x * y]), window_size, sigma, padding)
    mu_xy = mu_x * mu_y
    mu_sq = (mu_x * mu_x).add_(mu_y * mu_y)
    cs_num = (e_xy - mu_xy).mul_(2).add_(c2)
    cs_den = (e_xx + e_yy).sub_(mu_sq).add_(c2)
    return mu_x, mu_y, mu_xy.mul_(2).add_(c1), mu_sq.add_(c1), cs_num, cs_den


def ssim_map(x: Tensor, y: Tensor, window_size: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03, padding: str = 'same',
             data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM of maps ``x`` and ``y`` (N, C, H, W) with values in [0, data_range].

    Gaussian-window SSIM with C1 = (k1 L)^2, C2 = (k2 L)^2, each channel separately.
    ``padding='same'`` reflect-pads (as kornia.metrics.ssim) and returns (N, C, H, W); a side
    shorter than the window is reflected repeatedly, so the window is never shrunk.
    ``padding='valid'`` returns (N, C, H - w + 1, W - w + 1) and, like pytorch_msssim, does not
    blur along a side shorter than the window (that side keeps its size).
    """
    _, _, lum_num, lum_den, cs_num, cs_den = _ssim_terms(
        x, y, window_size, sigma, (k1 * data_range)**2, (k2 * data_range)**2, padding)
    return (lum_num * cs_num) / (lum_den * cs_den)


def _blurred_size(size: int, window_size: int, padding: str) -> int:
    """Length of one side after :func:`gaussian_blur`."""
    return size - window_size + 1 if padding == 'valid' and size >= window_size else size


def minmax_normalize(x: Tensor, granularity: str = 'channel', eps: float = 1e-6) -> Tensor:
    """Rescale ``x`` (N, C, H, W) to [0, 1] by its min and max.

    granularity: 'channel' (per image and channel), 'image' (per image) or 'level' (whole
    tensor). ``(x - min) / (max - min + eps)``: a constant map becomes zeros.
    """
    flat = x.flatten(_NORMALIZE_START_DIM[granularity])
    low, high = flat.aminmax(dim=-1, keepdim=True)
    return ((flat - low) / (high - low + eps)).reshape_as(x)


class _MeanSSIM(torch.autograd.Function):
    """mean(ssim_map(minmax_normalize(x), minmax_normalize(y))) (or of x, y themselves when
    ``granularity`` is None) with an analytic backward for x; y is a constant.

    The maps go through the SSIM statistics in chunks of channels, which bounds the temporary
    memory, and only the normalised maps and three partial derivatives per SSIM value are
    saved. Backward blurs the partials with the transposed blur matrices and applies the
    min-max normalisation's derivative: with D = max - min + eps and g = dL/d(normalised x),
    dL/dx = g / D, plus -sum(g (1 - x_n)) / D at the minimum and -sum(g x_n) / D at the
    maximum. Where several elements tie for the min (max), that term goes to one of them,
    whereas autograd through amin / amax splits it evenly among them.
    """

    chunk_numel = 2**22  # input elements per chunk (16 MiB in float32)

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, window_size: int, sigma: float, c1: float,
                c2: float, padding: str, granularity: Optional[str], eps: float) -> Tensor:
        needs_grad = ctx.needs_input_grad[0]
        start = _NORMALIZE_START_DIM[granularity] if granularity is not None else None
        if start is not None:
            flat = x.flatten(start)
            low, arg_low = flat.min(-1, keepdim=True)
            high, arg_high = flat.max(-1, keepdim=True)
            value_range = high.sub_(low).add_(eps)
            x = flat.sub(low).div_(value_range).reshape_as(x)
            y = minmax_normalize(y, granularity, eps)
        n, channels, height, width = x.shape
        out_size = (_blurred_size(height, window_size, padding),
                    _blurred_size(width, window_size, padding))
        # dS/d mu_x / 2, -dS/d E[x^2], dS/d E[xy] / 2 per SSIM value
        partials = x.new_empty((3, n, channels, *out_size)) if needs_grad else None
        step = max(1, _MeanSSIM.chunk_numel // (n * height * width))
        total = x.new_zeros(())
        for lo in range(0, channels, step):
            mu_x, mu_y, lum_num, lum_den, cs_num, cs_den = _ssim_terms(
                x[:, lo:lo + step], y[:, lo:lo + step], window_size, sigma, c1, c2, padding)
            inv_den = (lum_den * cs_den).reciprocal_()
            ssim = (lum_num * cs_num).mul_(inv_den)
            total += ssim.sum()
            if needs_grad:
                d_mu, d_xx, d_xy = partials[:, :, lo:lo + step]
                # mu_y (cs_num - lum_num) / den + mu_x S (1 / cs_den - 1 / lum_den)
                torch.sub(cs_num, lum_num, out=d_mu).mul_(mu_y).mul_(inv_den)
                d_mu.addcmul_(cs_den.reciprocal().sub_(lum_den.reciprocal_()).mul_(ssim), mu_x)
                torch.div(ssim, cs_den, out=d_xx)
                torch.mul(lum_num, inv_den, out=d_xy)
        count = n * channels * out_size[0] * out_size[1]
        if needs_grad:
            ctx.save_for_backward(x, y, partials, *((value_range, arg_low, arg_high)
                                                     if start is not None else ()))
            ctx.blur = (window_size, sigma, padding)
            ctx.start = start
            ctx.count = count
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, y, partials, *norm = ctx.saved_tensors
        g_mu, g_xx, g_xy = _gaussian_blur_adjoint(partials, *x.shape[-2:], *ctx.blur)
        grad_x = torch.addcmul(g_mu, x, g_xx, value=-1).addcmul_(y, g_xy)  # dL/dx count / 2
        scale = grad * (2 / ctx.count)
        if ctx.start is None:
            return (grad_x.mul_(scale),) + (None,) * 8
        value_range, arg_low, arg_high = norm
        flat_g, flat_x = grad_x.flatten(ctx.start), x.flatten(ctx.start)
        scale = scale / value_range
        d_high = (flat_g * flat_x).sum(-1, keepdim=True)
        d_low = flat_g.sum(-1, keepdim=True).sub_(d_high)  # sum of g (1 - x_n)
        flat_g.mul_(scale)
        flat_g.scatter_add_(-1, arg_low, d_low.mul_(scale).neg_())
        flat_g.scatter_add_(-1, arg_high, d_high.mul_(scale).neg_())
        return (grad_x,) + (None,) * 8


def ssim_loss(student: Tensor, teacher: Tensor, window_size: int = 11, sigma: float = 1.5,
              k1: float = 0.01, k2: float = 0.03, padding: str = 'same',
              normalize: Optional[str] = 'channel', eps: float = 1e-6) -> Tensor:
    """Mean of (1 - SSIM) / 2 between ``student`` and ``teacher`` features (N, C, H, W).

    With ``normalize`` set both are min-max normalised first (see :func:`minmax_normalize`);
    with ``normalize=None`` they must already lie in [0, 1]. The teacher is a constant: no
    gradient flows to it.
    """
    mean_ssim = _MeanSSIM.apply(student, teacher.detach(), window_size, sigma, k1**2, k2**2,
                                padding, normalize, eps)
    return 0.5 * (1 - mean_ssim)


@MODELS.register_module()
class SSIMLoss(nn.Module):
    """SSIM loss between student and teacher features of one FPN level.

    Both features are min-max normalised to [0, 1] (default per image and channel, so every
    channel is an image with dynamic range L = 1; the paper leaves the granularity open), then
    loss = loss_weight * mean over (N, C, H, W) of (1 - SSIM) / 2, in [0, loss_weight].
    Computed in float32 even under autocast; the teacher is treated as a constant.

    Args:
        loss_weight: multiplier of the loss (the paper's lambda: 2 or 4 summed over levels).
        window_size: odd Gaussian window length. sigma: its standard deviation.
        k1, k2: SSIM stabilisers, C1 = k1^2, C2 = k2^2.
        padding: 'same' (reflect, like kornia / torchmetrics) or 'valid' (like pytorch_msssim).
        normalize: 'channel', 'image', 'level' or None (inputs already in [0, 1]).
        eps: added to max - min in the normalisation, so constant maps stay finite.
    """

    def __init__(self, loss_weight: float = 1.0, window_size: int = 11, sigma: float = 1.5,
                 k1: float = 0.01, k2: float = 0.03, padding: str = 'same',
                 normalize: Optional[str] = 'channel', eps: float = 1e-6) -> None:
        super().__init__()
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f'window_size must be a positive odd integer, got {window_size!r}')
        if sigma <= 0:
            raise ValueError(f'sigma must be positive, got {sigma!r}')
        if padding not in ('same', 'valid'):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if normalize is not None and normalize not in _NORMALIZE_START_DIM:
            raise ValueError(f'normalize must be one of {tuple(_NORMALIZE_START_DIM)} or None, '
                             f'got {normalize!r}')
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        self.window_size = int(window_size)
        self.sigma = float(sigma)
        self.k1 = float(k1)
        self.k2 = float(k2)
        self.padding = padding
        self.normalize = normalize
        self.eps = float(eps)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student, teacher: (N, C, H, W) features. Returns the weighted scalar loss."""
        check_feature_pair(student, teacher, 'SSIMLoss')
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            loss = ssim_loss(student, teacher, self.window_size, self.sigma, self.k1, self.k2,
                             self.padding, self.normalize, self.eps)
        return self.loss_weight * loss
