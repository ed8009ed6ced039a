"""Separable Gaussian blur by banded matrix products: the blur inside SSIM
(:mod:`kd_det.losses.ssim`) and its adjoint for SSIM's backward.

A blur along one side is a table of taps (:func:`blur_table`), the matrix it makes, and, on
CPU, that matrix cut into blocks of outputs (:func:`blur_blocks`)."""
from functools import lru_cache
from typing import List, Optional, Tuple

import torch
from torch import Tensor


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
def blur_table(size: int, window_size: int, sigma: float,
                padding: str) -> Tuple[Tensor, Tensor, int]:
    """The blur along one side of length ``size``: out[o] = sum_t w[t] in[src[o + t]].

    Returns the taps w (float64), src (int64, length out + taps - 1) and out.
    'same': out = size, the input reflect-padded by window_size // 2 (folded into src).
    'valid': out = size - window_size + 1; when size < window_size, no blur (one tap of 1).
    """
    if padding == 'valid' and size < window_size:
        return torch.ones(1, dtype=torch.float64), torch.arange(size), size
    window = gaussian_window(window_size, sigma)
    if padding == 'valid':
        return window, torch.arange(size), size - window_size + 1
    return window, _reflect(torch.arange(size + window_size - 1) - window_size // 2, size), size


@lru_cache(maxsize=256)
def _blur_matrix(size: int, window_size: int, sigma: float, padding: str) -> Optional[Tensor]:
    """Matrix B (size, out), float64, such that ``rows @ B`` is :func:`blur_table`'s blur
    along the last dim; None where that blur is the identity."""
    window, src, out = blur_table(size, window_size, sigma, padding)
    if len(window) == 1:
        return None
    taps = torch.arange(len(window))[:, None]
    dst = torch.arange(out).expand(len(window), out)
    matrix = torch.zeros(size, out, dtype=torch.float64)
    matrix.index_put_((src[dst + taps].reshape(-1), dst.reshape(-1)),
                      window[:, None].expand(-1, out).reshape(-1), accumulate=True)
    return matrix


# On CPU a side this long or longer is blurred in blocks of _BLOCK outputs, each a product with
# only the rows of the band it needs: fewer multiply-adds than the whole banded matrix
# (26 instead of 128 per value at 128 with window 11), and faster from about 64 on
# (tools/analysis/benchmark_losses.py). On CUDA the whole matrix, in one product.
_BLOCK = 16
_BLOCKED_FROM = 64


@lru_cache(maxsize=256)
def blur_blocks(size: int, window_size: int, sigma: float, padding: str, adjoint: bool,
                 device: torch.device, dtype: torch.dtype) -> Optional[List[Tuple]]:
    """The blur of a side of length ``size`` (its adjoint with ``adjoint``) as
    [(lo, hi, block)]: the outputs of ``rows[..., lo:hi] @ block`` concatenated in order."""
    matrix = _blur_matrix(size, window_size, sigma, padding)
    if matrix is None:
        return None
    if adjoint:
        matrix = matrix.mT
    outputs = matrix.shape[1]
    step = _BLOCK if device.type == 'cpu' and outputs >= _BLOCKED_FROM else outputs
    blocks = []
    for start in range(0, outputs, step):
        block = matrix[:, start:start + step]
        rows = block.ne(0).any(1).nonzero()
        lo, hi = rows.min().item(), rows.max().item() + 1
        blocks.append((lo, hi, block[lo:hi].to(device=device, dtype=dtype)))
    return blocks


def separable_blur(maps: Tensor, size: Tuple[int, int], window_size: int, sigma: float,
                    padding: str, adjoint: bool = False) -> Tensor:
    """Gaussian blur (or its adjoint) of ``maps`` (..., H', W') along W, then H; ``size`` is
    the (H, W) of the blur's input."""
    height, width = size
    blocks = blur_blocks(width, window_size, sigma, padding, adjoint, maps.device, maps.dtype)
    if blocks is not None:
        parts = [maps[..., lo:hi] @ block for lo, hi, block in blocks]
        maps = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
    blocks = blur_blocks(height, window_size, sigma, padding, adjoint, maps.device, maps.dtype)
    if blocks is not None:
        parts = [block.mT @ maps[..., lo:hi, :] for lo, hi, block in blocks]
        maps = parts[0] if len(parts) == 1 else torch.cat(parts, -2)
    return maps


def gaussian_blur(maps: Tensor, window_size: int = 11, sigma: float = 1.5,
                  padding: str = 'same') -> Tensor:
    """Separable Gaussian blur of ``maps`` (..., H, W) -> (..., H', W').

    Each 1-D pass is a product with a banded matrix (reflect padding folded in; on CPU long
    sides block by block), which on CPU is faster than a depthwise convolution over the same
    maps. On CUDA, allowing TF32 matmuls lowers its precision.
    """
    return separable_blur(maps, maps.shape[-2:], window_size, sigma, padding)


def blurred_size(size: int, window_size: int, padding: str) -> int:
    """Length of one side after :func:`gaussian_blur`."""
    return size - window_size + 1 if padding == 'valid' and size >= window_size else size
