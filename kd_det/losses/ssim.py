"""SSIM feature-distillation loss (de Rijk et al., NeurIPS 2022, arXiv 2211.13133)."""
import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Optional, Tuple

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
import torch.nn as nn
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmengine.logging import print_log

from mmdet.registry import MODELS

from .gaussian_blur import blur_table, blurred_size, gaussian_blur, separable_blur
from .receives import Receives
from .utils import (as_float32_pair, check_feature_pair, check_non_negative,
                    float32_no_autocast)

# first dim flattened into the min-max statistics of each granularity
_NORMALIZE_START_DIM = {'channel': 2, 'image': 1, 'level': 0}


def ssim_map(x: Tensor, y: Tensor, window_size: int = 11, sigma: float = 1.5,
             k1: float = 0.01, k2: float = 0.03, padding: str = 'same',
             data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM of maps ``x`` and ``y`` (N, C, H, W) with values in [0, data_range].

    Gaussian-window SSIM with C1 = (k1 L)^2, C2 = (k2 L)^2, each channel separately.
    ``padding='same'`` reflect-pads (as kornia.metrics.ssim) and returns (N, C, H, W); a side
    shorter than the window is reflected repeatedly, so the window is never shrunk.
    ``padding='valid'`` returns (N, C, H - w + 1, W - w + 1) and, like pytorch_msssim, does not
    blur along a side shorter than the window (that side keeps its size). Differentiable by
    autograd (the loss has its own backward).
    """
    c1, c2 = (k1 * data_range)**2, (k2 * data_range)**2
    # four blurred maps: SSIM only needs the sum of the two variances
    mu_x, mu_y, e_sq, e_xy = gaussian_blur(torch.stack([x, y, x * x + y * y, x * y]),
                                           window_size, sigma, padding)
    mu_xy = mu_x * mu_y
    mu_sq = mu_x * mu_x + mu_y * mu_y
    return ((2 * mu_xy + c1) * (2 * (e_xy - mu_xy) + c2)) / ((mu_sq + c1) * (e_sq - mu_sq + c2))


def minmax_normalize(x: Tensor, granularity: str = 'channel', eps: float = 1e-6) -> Tensor:
    """Rescale ``x`` (N, C, H, W) to [0, 1] by its min and max.

    granularity: 'channel' (per image and channel), 'image' (per image) or 'level' (whole
    tensor). ``(x - min) / (max - min + eps)``: a constant map becomes zeros.
    """
    flat = x.flatten(_NORMALIZE_START_DIM[granularity])
    # amin/amax, not aminmax: torch < 2.2 has no derivative for aminmax
    low, high = flat.amin(dim=-1, keepdim=True), flat.amax(dim=-1, keepdim=True)
    return ((flat - low) / (high - low + eps)).reshape_as(x)


def _group_minmax(x: Tensor, y: Tensor, start: Optional[int],
                  eps: float) -> Tuple[Tensor, ...]:
    """Min-max statistics over the dims from ``start`` on (see :data:`_NORMALIZE_START_DIM`):
    x_low, x_inv = 1 / (max - min + eps), y_low, y_inv, shaped to broadcast over (N, C, H, W),
    and the flat positions of the min and max of x in each group, (..., 1). ``start=None``:
    no normalisation (low 0, inv 1, no positions)."""
    if start is None:
        zero, one = x.new_zeros((1, 1, 1, 1)), x.new_ones((1, 1, 1, 1))
        return zero, one, zero, one, None, None
    flat_x, flat_y = x.flatten(start), y.flatten(start)
    x_low, arg_low = flat_x.min(-1, keepdim=True)
    x_high, arg_high = flat_x.max(-1, keepdim=True)
    y_low = flat_y.amin(-1, keepdim=True)
    y_high = flat_y.amax(-1, keepdim=True)
    shape = x_low.shape[:-1] + (1,) * (5 - x_low.dim())
    x_inv = x_high.sub_(x_low).add_(eps).reciprocal_()
    y_inv = y_high.sub_(y_low).add_(eps).reciprocal_()
    return (x_low.view(shape), x_inv.view(shape), y_low.view(shape), y_inv.view(shape),
            arg_low, arg_high)


_KERNEL_SOURCE = Path(__file__).with_name('ssim_cpu.cpp')


@contextmanager
def kernel_build_lock(build_dir: str):
    """Held while this process builds or loads the kernel: an exclusive ``flock`` on
    ``build_dir/kd_det.lock``, which the OS releases when its holder exits or is killed.

    torch's own build lock, the file ``build_dir/lock``, stays behind when its process is
    killed mid-build, and every later build then waits for it forever. Every kd_det process
    holds this lock around torch's, so a ``lock`` file found while holding it was left by a
    dead process, and is removed. (Without ``fcntl``, e.g. on Windows: no lock, torch's own.)
    """
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(build_dir, 'kd_det.lock'), 'a') as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
            stale = os.path.join(build_dir, 'lock')
            if os.path.exists(stale):
                os.remove(stale)
                print_log(f'kd_det: removed {stale}, left by a killed build of the SSIM kernel',
                          logger='current', level=logging.WARNING)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


@lru_cache(maxsize=None)
def _cpu_kernel():
    """The fused C++ SSIM kernel (ssim_cpu.cpp) for float32 on CPU, compiled with the system's
    C++ compiler and ninja on first use and cached by torch (under $TORCH_EXTENSIONS_DIR,
    default ~/.cache/torch_extensions); None, with a warning, where it cannot be built.
    KD_DET_SSIM_KERNEL=0 turns it off."""
    if os.environ.get('KD_DET_SSIM_KERNEL', '1') == '0':
        return None
    print_log('kd_det: loading the fused SSIM CPU kernel (the first time on a machine it is '
              'compiled, about 30 s)', logger='current')
    try:
        from torch.utils.cpp_extension import _get_build_directory, load
        if shutil.which('ninja') is None:  # the pip package's, outside an activated venv
            import ninja
            os.environ['PATH'] = ninja.BIN_DIR + os.pathsep + os.environ.get('PATH', '')
        with kernel_build_lock(_get_build_directory('kd_det_ssim_cpu', verbose=False)):
            return load('kd_det_ssim_cpu', [str(_KERNEL_SOURCE)],
                        extra_cflags=['-O3', '-fopenmp-simd'])
    except Exception as error:  # no compiler, no ninja, an unsupported platform
        warnings.warn(f'kd_det: the fused SSIM CPU kernel could not be built ({error}); '
                      'SSIMLoss falls back to its PyTorch implementation, about 2.5x slower')
        return None


def _ssim_sums_kernel(kernel, x: Tensor, y: Tensor, start: Optional[int], eps: float,
                      grad_scale: float, window_size: int, sigma: float, c1: float, c2: float,
                      padding: str, needs_grad: bool) -> Tuple[Optional[Tensor], ...]:
    """:func:`_ssim_sums_torch` by the fused CPU kernel, which also finds the statistics of
    the default granularity ('channel') itself. Returns its four results, then x_inv and the
    positions of the min and max of x per group (see :func:`_group_minmax`)."""
    n, channels, height, width = x.shape
    window_h, src_h, out_h = blur_table(height, window_size, sigma, padding)
    window_w, src_w, out_w = blur_table(width, window_size, sigma, padding)
    slices = n * channels
    if start == 2:  # per slice: the kernel's own
        x_low, x_inv, y_low, y_inv = x.new_empty((4, slices))
        arg_low, arg_high = x.new_empty((2, slices), dtype=torch.int64)
        stats_eps = eps
        group_inv = x_inv
    else:
        *stats, arg_low, arg_high = _group_minmax(x, y, start, eps)
        group_inv = stats[1]
        x_low, x_inv, y_low, y_inv = (stat.expand(n, channels, 1, 1).reshape(-1).contiguous()
                                      for stat in stats)
        stats_eps = -1.0  # read the statistics
    unused = x.new_empty(0, dtype=torch.int64)
    ssim_sums, grad_x, sum_g, sum_gx = kernel.ssim_forward(
        x.reshape(slices, height, width).contiguous(),
        y.reshape(slices, height, width).contiguous(), x_low, x_inv, y_low, y_inv,
        arg_low if start == 2 else unused, arg_high if start == 2 else unused, stats_eps,
        window_h.float(), src_h, window_w.float(), src_w, out_h, out_w, c1, c2, needs_grad,
        grad_scale)
    if start == 2:
        group_inv, arg_low, arg_high = (t.view(n, channels, 1)
                                        for t in (group_inv, arg_low, arg_high))
    return (ssim_sums.sum().float(), grad_x.view(x.shape) if needs_grad else None,
            sum_g.view(n, channels).float(), sum_gx.view(n, channels).float(), group_inv,
            arg_low, arg_high)


def _ssim_sums_torch(x: Tensor, y: Tensor, x_low: Tensor, x_inv: Tensor, y_low: Tensor,
                     y_inv: Tensor, grad_scale: float, window_size: int, sigma: float,
                     c1: float, c2: float, padding: str,
                     needs_grad: bool) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """Sum of SSIM over x_n = (x - x_low) x_inv and y_n likewise (the stats broadcast over
    (N, C, H, W)) and, with ``needs_grad``, g = d sum(S) / d x_n halved: returns the sum,
    g x_inv grad_scale (N, C, H, W) and the per channel sums of g and of g x_n (N, C).

    The maps go through SSIM in chunks of channels small enough to stay in the CPU cache
    (and to bound the temporary memory); each chunk's g comes right away from the three
    partial derivatives of SSIM, blurred back with the transposed blur.
    """
    n, channels, height, width = x.shape
    grad_x = torch.empty_like(x) if needs_grad else None
    sum_g, sum_gx = x.new_zeros((2, n, channels))

    def chunk_of(stat: Tensor, lo: int, hi: int) -> Tensor:
        return stat[:, lo:hi] if stat.shape[1] == channels else stat

    chunk_numel = (_MeanSSIM.cpu_chunk_numel if x.device.type == 'cpu'
                   else _MeanSSIM.device_chunk_numel)
    step = max(1, chunk_numel // (n * height * width))
    total = x.new_zeros(())
    c1_tensor = x.new_full((), c1)
    for lo in range(0, channels, step):
        hi = min(lo + step, channels)
        # the maps to blur: x_n, y_n, x_n^2 + y_n^2, x_n y_n
        maps = x.new_empty((4, n, hi - lo, height, width))
        xn, yn = maps[0], maps[1]
        torch.sub(x[:, lo:hi], chunk_of(x_low, lo, hi), out=xn)
        torch.sub(y[:, lo:hi], chunk_of(y_low, lo, hi), out=yn)
        xn.mul_(chunk_of(x_inv, lo, hi))
        yn.mul_(chunk_of(y_inv, lo, hi))
        torch.mul(xn, xn, out=maps[2]).addcmul_(yn, yn)
        torch.mul(xn, yn, out=maps[3])
        mu_x, mu_y, e_sq, e_xy = gaussian_blur(maps, window_size, sigma, padding)
        # SSIM = lum_num cs_num / (lum_den cs_den) (see ssim_map), with
        # cs_num = 2 E[xy] - lum_num + C1 + C2 and cs_den = E[x^2 + y^2] - lum_den + C1 + C2
        lum_num = torch.addcmul(c1_tensor, mu_x, mu_y, value=2)
        lum_den = torch.addcmul(c1_tensor, mu_x, mu_x).addcmul_(mu_y, mu_y)
        cs_num = e_xy.mul_(2).sub_(lum_num).add_(c1 + c2)
        cs_den = e_sq.sub_(lum_den).add_(c1 + c2)
        inv_den = (lum_den * cs_den).reciprocal_()
        # halved partials of S: d/d mu_x, -d/d E[x^2 + y^2], d/d E[xy]
        partials = torch.empty((3,) + inv_den.shape, dtype=x.dtype, device=x.device)
        d_mu, d_sq, d_xy = partials
        torch.mul(lum_num, inv_den, out=d_xy)
        ssim = d_xy * cs_num
        total += ssim.sum()
        if not needs_grad:
            continue
        # (mu_y (cs_num - lum_num) + mu_x S (lum_den - cs_den)) / (lum_den cs_den)
        torch.sub(cs_num, lum_num, out=d_mu).mul_(mu_y)
        d_mu.addcmul_(lum_den.sub_(cs_den).mul_(ssim), mu_x).mul_(inv_den)
        torch.div(ssim, cs_den, out=d_sq)
        g_mu, g_sq, g_xy = separable_blur(partials, (height, width), window_size, sigma,
                                           padding, adjoint=True)
        g = g_mu.addcmul_(xn, g_sq, value=-1).addcmul_(yn, g_xy)
        sum_g[:, lo:hi] = g.sum((2, 3))
        sum_gx[:, lo:hi] = torch.linalg.vecdot(g.flatten(2), xn.flatten(2))
        torch.mul(g, chunk_of(x_inv, lo, hi) * grad_scale, out=grad_x[:, lo:hi])
    return total, grad_x, sum_g, sum_gx


class _MeanSSIM(torch.autograd.Function):
    """mean(ssim_map(minmax_normalize(x), minmax_normalize(y))) (or of x, y themselves when
    ``granularity`` is None), differentiable in x only; y is a constant.

    float32 on CPU goes through the fused C++ kernel when it is available, everything else
    through :func:`_ssim_sums_torch`. When x needs a gradient, the forward computes the whole
    dL/dx and saves only it, so backward just scales it. The min-max normalisation's
    derivative, with D = max - min + eps and g = dL/d(normalised x): g / D, plus
    -sum(g (1 - x_n)) / D at the minimum and -sum(g x_n) / D at the maximum. Where several
    elements tie for the min (max), that term goes to one of them, whereas autograd through
    amin / amax splits it evenly among them.
    """

    # input elements per chunk of the PyTorch path: on CPU 256 KiB a map, so that a chunk's
    # dozen maps stay in the cache (the fastest of 2^14..2^20 at 512x512); elsewhere more,
    # for fewer kernel launches
    cpu_chunk_numel = 2**16
    device_chunk_numel = 2**24

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, window_size: int, sigma: float, c1: float,
                c2: float, padding: str, granularity: Optional[str], eps: float) -> Tensor:
        needs_grad = ctx.needs_input_grad[0]
        n, channels, height, width = x.shape
        out_size = (blurred_size(height, window_size, padding),
                    blurred_size(width, window_size, padding))
        count = n * channels * out_size[0] * out_size[1]
        grad_scale = 2 / count  # d mean(S) / dx = 2 / count * (halved partials blurred back)
        start = None if granularity is None else _NORMALIZE_START_DIM[granularity]
        kernel = _cpu_kernel() if x.device.type == 'cpu' and x.dtype == torch.float32 else None
        if kernel is not None:
            total, grad_x, sum_g, sum_gx, x_inv, arg_low, arg_high = _ssim_sums_kernel(
                kernel, x, y, start, eps, grad_scale, window_size, sigma, c1, c2, padding,
                needs_grad)
        else:
            x_low, x_inv, y_low, y_inv, arg_low, arg_high = _group_minmax(x, y, start, eps)
            total, grad_x, sum_g, sum_gx = _ssim_sums_torch(
                x, y, x_low, x_inv, y_low, y_inv, grad_scale, window_size, sigma, c1, c2,
                padding, needs_grad)
        if needs_grad:
            if start is not None:
                # x_n = (x - min) / D: the min and max terms, summed over each normalised group
                if start < 2:  # sum the channels (and images) of each group
                    sum_g, sum_gx = sum_g.flatten(start).sum(-1), sum_gx.flatten(start).sum(-1)
                group_shape = arg_low.shape
                d_high = sum_gx.view(group_shape)
                d_low = sum_g.view(group_shape).sub_(d_high)
                flat_scale = x_inv.reshape(group_shape) * grad_scale
                flat_grad = grad_x.flatten(start)
                flat_grad.scatter_add_(-1, arg_low, d_low.mul_(flat_scale).neg_())
                flat_grad.scatter_add_(-1, arg_high, d_high.mul_(flat_scale).neg_())
            ctx.save_for_backward(grad_x)
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        grad_x, = ctx.saved_tensors
        return (grad_x * grad,) + (None,) * 8


def ssim_loss(student: Tensor, teacher: Tensor, window_size: int = 11, sigma: float = 1.5,
              k1: float = 0.01, k2: float = 0.03, padding: str = 'same',
              normalize: Optional[str] = 'channel', eps: float = 1e-6) -> Tensor:
    """Mean of (1 - SSIM) / 2 between ``student`` and ``teacher`` features (N, C, H, W).

    With ``normalize`` set both are min-max normalised first (see :func:`minmax_normalize`);
    with ``normalize=None`` they must already lie in [0, 1]. The teacher is a constant: no
    gradient flows to it.
    """
    if not torch.is_grad_enabled():
        student = student.detach()  # skip the gradient, which the forward computes otherwise
    mean_ssim = _MeanSSIM.apply(student, teacher.detach(), window_size, sigma, k1**2, k2**2,
                                padding, normalize, eps)
    return 0.5 * (1 - mean_ssim)


@MODELS.register_module()
class SSIMLoss(nn.Module):
    """SSIM loss between student and teacher features of one FPN level.

    Both features are min-max normalised to [0, 1] (default per image and channel, so every
    channel is an image with dynamic range L = 1; the paper leaves the granularity open), then
    loss = loss_weight * mean over (N, C, H, W) of (1 - SSIM) / 2, in [0, loss_weight].
    Computed in float32 even under autocast; the teacher is treated as a constant. On CPU a
    fused C++ kernel (ssim_cpu.cpp, compiled on first use) computes value and gradient;
    elsewhere, or without a compiler, the same computation runs in PyTorch.

    Args:
        loss_weight: multiplier of the loss (the paper's lambda: 2 or 4 summed over levels).
        window_size: odd Gaussian window length. sigma: its standard deviation.
        k1, k2: SSIM stabilisers, C1 = k1^2, C2 = k2^2.
        padding: 'same' (reflect, like kornia / torchmetrics) or 'valid' (like pytorch_msssim).
        normalize: 'channel', 'image', 'level' or None (inputs already in [0, 1]).
        eps: added to max - min in the normalisation, so constant maps stay finite.
    """

    receives = Receives()  # forward(student, teacher) per level, (N, C, H, W) each

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
