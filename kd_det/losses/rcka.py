"""Relation-based CKA distillation loss, RCKA / PCKA (Zhou et al., IJCAI 2024, arXiv 2401.11824).

Official code: Klayand/PCKA (``CenterKernelAlignmentRKD`` for detection,
``CenterKernelAlignmentSeg`` for logits).
"""
import math
from typing import Optional, Tuple

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mmdet.registry import MODELS

from .receives import Receives
from .utils import (as_float32_pair, check_feature_pair, check_non_negative, check_same_shape,
                    float32_no_autocast)

_TINY = 1e-30  # floor of squared norms, keeps rsqrt finite on all-zero inputs
_EPS = 1e-12  # floor of the squared CKA denominator (inputs are rescaled to unit norm first)


def _inverse_norm(gram: Tensor) -> Tensor:
    """1 / ||x||_F = 1 / sqrt(tr(x x^T)) from Gram matrices (..., n, n), detached, (..., 1, 1).

    CKA is scale invariant, so rescaling x to unit norm changes neither its value nor its
    gradient (hence the detach); it keeps the fourth powers below in float32 range and makes the
    eps scale-free.
    """
    trace = gram.diagonal(dim1=-2, dim2=-1).sum(-1)
    return trace.clamp_min(_TINY).rsqrt().detach()[..., None, None]


def _cosine(h_xy: Tensor, h_xx: Tensor, h_yy: Tensor) -> Tensor:
    """<K, L> / (||K|| ||L||) from the three Frobenius products, finite when a Gram is zero."""
    return h_xy * (h_xx * h_yy).clamp_min(_EPS).rsqrt()


def _frobenius(a: Tensor, b: Tensor) -> Tensor:
    """<a, b>_F of matrices (..., n, m) -> (...), as one batched product (no temporaries)."""
    return (a.flatten(-2)[..., None, :] @ b.flatten(-2)[..., :, None])[..., 0, 0]


def _center_gram(gram: Tensor) -> Tensor:
    """H K H with H = I - 11^T / n for Gram matrices (..., n, n)."""
    gram = gram - gram.mean(-1, keepdim=True)
    return gram - gram.mean(-2, keepdim=True)


def _row_normalize_gram(gram: Tensor) -> Tensor:
    """Official ``with_l2_norm``: row i of the Gram divided by sqrt(K_ii) = ||x_i||."""
    diag = gram.diagonal(dim1=-2, dim2=-1)
    return gram * diag.clamp_min(_TINY).rsqrt()[..., :, None]


def gram_cka(gram_x: Tensor, gram_y: Tensor, with_l2_norm: bool = False) -> Tensor:
    """Linear CKA <K, L>_F / (||K||_F ||L||_F) of Gram matrices (..., n, n) -> (...)."""
    if with_l2_norm:
        gram_x, gram_y = _row_normalize_gram(gram_x), _row_normalize_gram(gram_y)
    return _cosine(_frobenius(gram_x, gram_y), _frobenius(gram_x, gram_x),
                   _frobenius(gram_y, gram_y))


def cka_terms(x: Tensor, y: Tensor, centered: bool = False, with_l2_norm: bool = False,
              inter: bool = True) -> Tuple[Tensor, Optional[Tensor]]:
    """Intra and inter linear CKA of ``x`` and ``y`` (..., n, d), batched over leading dims.

    intra: CKA between the (n, n) Gram matrices x x^T and y y^T (rows are the samples).
    inter: CKA between the (d, d) Gram matrices x^T x and y^T y of the transposes (columns are
    the samples), computed without forming them: ||x^T x||_F = ||x x^T||_F and
    <x^T x, y^T y>_F = ||x y^T||_F^2, so only (n, n) matrices are built.

    centered: Kornblith's centring H K H. For the intra term that is centring the rows' Gram
    (double-centring x x^T); for the inter term it is x H_d, i.e. subtracting each row's mean,
    which turns x x^T into x x^T - s s^T / d and x y^T into x y^T - s t^T / d (s, t row sums).
    with_l2_norm: the official row normalisation, row i of each Gram divided by the norm of
    sample i (after centring). Returns intra (...) and inter (...) or None.
    """
    gram_x, gram_y = x @ x.mT, y @ y.mT
    inv_x, inv_y = _inverse_norm(gram_x), _inverse_norm(gram_y)
    gram_x, gram_y = gram_x * inv_x.square(), gram_y * inv_y.square()  # of x / ||x||_F
    if centered:
        intra = gram_cka(_center_gram(gram_x), _center_gram(gram_y), with_l2_norm)
    else:
        intra = gram_cka(gram_x, gram_y, with_l2_norm)
    if not inter:
        return intra, None

    cross = (x @ y.mT) * (inv_x * inv_y)
    if centered:
        dim = x.shape[-1]
        sum_x, sum_y = x.sum(-1, keepdim=True) * inv_x, y.sum(-1, keepdim=True) * inv_y
        gram_x = gram_x - sum_x * sum_x.mT / dim
        gram_y = gram_y - sum_y * sum_y.mT / dim
        cross = cross - sum_x * sum_y.mT / dim
    if with_l2_norm:
        # sum_ij a_i b_i (x_i.x_j)(y_i.y_j) = <x diag(a b) y^T, x y^T> over columns i, j
        x, y = x * inv_x, y * inv_y
        if centered:
            x, y = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
        col_x = x.pow(2).sum(-2, keepdim=True).clamp_min(_TINY).rsqrt()
        col_y = y.pow(2).sum(-2, keepdim=True).clamp_min(_TINY).rsqrt()
        h_xy = _frobenius(cross, (x * (col_x * col_y)) @ y.mT)
        h_xx = _frobenius(gram_x, (x * col_x.pow(2)) @ x.mT)
        h_yy = _frobenius(gram_y, (y * col_y.pow(2)) @ y.mT)
    else:
        h_xy = _frobenius(cross, cross)
        h_xx = _frobenius(gram_x, gram_x)
        h_yy = _frobenius(gram_y, gram_y)
    return intra, _cosine(h_xy, h_xx, h_yy)


def to_patches(x: Tensor, patch_size: int = 16) -> Tensor:
    """(N, C, H, W) -> (C, P, N * patch_size^2): per channel, one row per patch.

    H and W are first resized bilinearly up to the next multiple of ``patch_size`` (skipped
    when they already are, where bilinear resizing is the identity), as in the official code.
    """
    n, c, h, w = x.shape
    rows, cols = math.ceil(h / patch_size), math.ceil(w / patch_size)
    if (rows * patch_size, cols * patch_size) != (h, w):
        x = F.interpolate(x, size=(rows * patch_size, cols * patch_size), mode='bilinear',
                          align_corners=False)
    x = x.reshape(n, c, rows, patch_size, cols, patch_size).permute(1, 2, 4, 0, 3, 5)
    return x.reshape(c, rows * cols, n * patch_size * patch_size)


def rcka_loss(student: Tensor, teacher: Tensor, intra_weight: float = 1.0,
              inter_weight: float = 0.0, patch_size: Optional[int] = 16,
              centered: bool = False, with_l2_norm: bool = False) -> Tensor:
    """-(intra_weight * CKA_intra + inter_weight * CKA_inter), in [-(w_intra + w_inter), 0].

    Patch mode (``patch_size`` set): student, teacher (N, C, H, W); for each channel the patches
    are the samples (see :func:`to_patches`), both terms are averaged over channels.
    Plain mode (``patch_size=None``): student, teacher (N, ...) flattened to (N, D); rows are
    the samples (intra, N x N) and, for the inter term, the D columns.
    """
    if patch_size is None:
        student, teacher = student.flatten(1)[None], teacher.flatten(1)[None]
    else:
        student, teacher = to_patches(student, patch_size), to_patches(teacher, patch_size)
    intra, inter = cka_terms(student, teacher, centered, with_l2_norm, inter=inter_weight != 0)
    loss = -intra_weight * intra.mean()
    if inter is not None:
        loss = loss - inter_weight * inter.mean()
    return loss


@MODELS.register_module()
class RCKALoss(nn.Module):
    """Relational CKA loss between student and teacher features (one FPN level, or logits).

    Reproduces the official Klayand/PCKA values by default. The returned (and logged) value is
    the official ``-loss_weight * CKA`` (plus the inter term), which is <= 0: identical inputs
    give the bound ``-loss_weight`` (``-(loss_weight + inter_weight)`` with the inter term),
    and 1 - CKA differs from it only by a constant. Computed in float32 even under autocast;
    the teacher is treated as a constant.

    Args:
        loss_weight: weight of the intra term (official ``intra_weight``, 10 in the COCO configs).
        inter_weight: weight of the inter term (CKA on the transposes), used as given; 0 / None
            disables it. The official code weights the inter term by ``intra_weight`` whatever
            its ``inter_weight`` (which only switches it on): its configs, intra = inter = 10,
            are reproduced with ``inter_weight=loss_weight``.
        centered: Kornblith's centred CKA (paper's theory); the official code does not centre.
        patch_size: patch mode for (N, C, H, W) detection features: both are resized bilinearly
            to the next multiple of ``patch_size``, the patch_size x patch_size patches of each
            channel are the samples, and the per-channel CKA is averaged over channels. None:
            plain mode for (N, D) logits or pooled features, rows are the samples. A level
            of one patch (<= patch_size in H and W) has intra CKA 1 and no intra gradient
            (the official code fails there); the official configs use FPN levels 0..3.
        with_l2_norm: official row normalisation of the Gram matrices (used for logits).
    """

    receives = Receives()  # forward(student, teacher) per level (N, C, H, W) or on (R, K) rows

    def __init__(self, loss_weight: float = 1.0, inter_weight: Optional[float] = None,
                 centered: bool = False,
                 patch_size: Optional[int] = 16, with_l2_norm: bool = False) -> None:
        super().__init__()
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        self.inter_weight = check_non_negative(inter_weight or 0.0, 'inter_weight')
        if patch_size is not None and patch_size < 1:
            raise ValueError(f'patch_size must be a positive integer or None, got {patch_size!r}')
        self.centered = centered
        self.patch_size = patch_size
        self.with_l2_norm = with_l2_norm

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student, teacher: (N, C, H, W) in patch mode, (N, ...) in plain mode."""
        if self.patch_size is None:
            check_same_shape(student, teacher, 'RCKALoss')
        else:
            check_feature_pair(student, teacher, 'RCKALoss')
        with float32_no_autocast(student):
            student, teacher = as_float32_pair(student, teacher)
            return rcka_loss(student, teacher, self.loss_weight, self.inter_weight,
                             self.patch_size, self.centered, self.with_l2_norm)
