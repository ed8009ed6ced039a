"""SSIM feature-distillation loss (de Rijk et al., NeurIPS 2022, arXiv 2211.13133)."""
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

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
    cs_num = 2 sigma_xy + C2, cs_den = sigma_x^2 + sigma_y^2 + C2.
    """
    # one blur over the five maps: the means, second moments and the cross moment
    mu_x, mu_y, e_xx, e_yy, e_xy = gaussian_blur(
        torch.stack([x, y, x * x, y * y, x * y]), window_size, sigma, padding)
    mu_xy = mu_x * mu_y
    mu_sq = mu_x * mu_x + mu_y * mu_y
    cs_num = 2 * (e_xy - mu_xy) + c2
    cs_den = e_xx + e_yy - mu_sq + c2
    return mu_x, mu_y, 2 * mu_xy + c1, mu_sq + c1, cs_num, cs_den


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


class _MeanSSIM(torch.autograd.Function):
    """mean(ssim_map(x, y)) with an analytic backward for x; y is a constant.

    Saves three maps instead of autograd's graph of the formula, and its backward blurs three
    maps (with the transposed blur matrices) instead of five.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, window_size: int, sigma: float, c1: float,
                c2: float, padding: str) -> Tensor:
        mu_x, mu_y, lum_num, lum_den, cs_num, cs_den = _ssim_terms(
            x, y, window_size, sigma, c1, c2, padding)
        inv_den = (lum_den * cs_den).reciprocal_()
        ssim = lum_num * cs_num * inv_den
        if ctx.needs_input_grad[0]:
            # dS/d mu_x, dS/d E[x^2], dS/d E[xy], divided by the number of SSIM values
            scale = 2 / ssim.numel()
            d_mu = (mu_y * (cs_num - lum_num) * inv_den
                    + mu_x * ssim * (cs_den.reciprocal() - lum_den.reciprocal())) * scale
            d_xx = ssim / cs_den * (-scale / 2)
            d_xy = lum_num * inv_den * scale
            ctx.save_for_backward(x, y, torch.stack([d_mu, d_xx, d_xy]))
            ctx.blur = (window_size, sigma, padding)
        return ssim.mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, y, d_stats = ctx.saved_tensors
        g_mu, g_xx, g_xy = _gaussian_blur_adjoint(d_stats, *x.shape[-2:], *ctx.blur)
        grad_x = torch.addcmul(g_mu, x, g_xx, value=2).addcmul_(y, g_xy).mul_(grad)
        return grad_x, None, None, None, None, None, None


def minmax_normalize(x: Tensor, granularity: str = 'channel', eps: float = 1e-6) -> Tensor:
    """Rescale ``x`` (N, C, H, W) to [0, 1] by its min and max.

    granularity: 'channel' (per image and channel), 'image' (per image) or 'level' (whole
    tensor). ``(x - min) / (max - min + eps)``: a constant map becomes zeros.
    """
    flat = x.flatten(_NORMALIZE_START_DIM[granularity])
    low, high = flat.aminmax(dim=-1, keepdim=True)
    return ((flat - low) / (high - low + eps)).reshape_as(x)


def ssim_loss(student: Tensor, teacher: Tensor, window_size: int = 11, sigma: float = 1.5,
              k1: float = 0.01, k2: float = 0.03, padding: str = 'same',
              normalize: Optional[str] = 'channel', eps: float = 1e-6) -> Tensor:
    """Mean of (1 - SSIM) / 2 between ``student`` and ``teacher`` features (N, C, H, W).

    With ``normalize`` set both are min-max normalised first (see :func:`minmax_normalize`);
    with ``normalize=None`` they must already lie in [0, 1]. The teacher is a constant: no
    gradient flows to it.
    """
    if normalize is not None:
        student = minmax_normalize(student, normalize, eps)
        teacher = minmax_normalize(teacher, normalize, eps)
    mean_ssim = _MeanSSIM.apply(student, teacher, window_size, sigma, k1**2, k2**2, padding)
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
