"""UniKD's adaptive features fusion, on the RoI features of every pyramid level.

Huang et al., "Harmonizing Knowledge Transfer in Neural Network with Unified
Distillation", ECCV 2024, arXiv 2409.18565, Sec. "Adaptive Features Fusion":
every stage is brought to common channels by a 1x1 conv; from the deepest
stage up, a conv on the concatenation of the current stage and the fused
deeper one, followed by a sigmoid, gives two weights, and the stage's fused
feature is their weighted sum; the shallowest fused feature is the
comprehensive representation.

On a detector the stages are the FPN levels, and each sampled RoI is pooled on
*every* level (as PANet's adaptive feature pooling does), so all levels of one
RoI have the same (S, S) size and the fusion needs no resampling.
"""
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def gated_sum(lateral: Tensor, deeper: Tensor, gate_logits: Tensor) -> Tensor:
    """``w_0 * lateral + w_1 * deeper`` with ``(w_0, w_1) = sigmoid(gate_logits)``.

    Args:
        lateral, deeper (Tensor): (R, C, S, S) the current level and the fused deeper one.
        gate_logits (Tensor): (R, 2, S, S) the gate conv's output.
    """
    weights = gate_logits.sigmoid()
    return weights[:, :1] * lateral + weights[:, 1:] * deeper


class RoILevelFusion(nn.Module):
    """Gated top-down fusion of L levels of RoI features into one vector per RoI.

    Each level (R, C_in, S, S), finest first, is standardised per RoI (a layer
    norm over (C_in, S, S) without parameters: the feature scale differs
    between networks and levels, and the gates should not start saturated),
    then brought to ``channels`` by its own 1x1 conv (the laterals). From the
    deepest level up, ``fused_{L-1} = lateral_{L-1}`` and
    ``fused_l = gated_sum(lateral_l, fused_{l+1}, gate_l([lateral_l, fused_{l+1}]))``
    with ``gate_l`` a 1x1 conv to two channels (per-position weights).
    ``fused_0`` is averaged over its S x S positions.

    Args:
        in_channels (int): Channels of every input level.
        num_levels (int): Number of levels L (>= 2).
        channels (int): Common channels of the laterals and the fused feature.
    """

    def __init__(self, in_channels: int, num_levels: int, channels: int) -> None:
        super().__init__()
        if not isinstance(num_levels, int) or num_levels < 2:
            raise ValueError(f'RoILevelFusion: num_levels={num_levels!r}; the fusion needs '
                             'at least 2 levels')
        self.num_levels = num_levels
        self.laterals = nn.ModuleList(
            nn.Conv2d(in_channels, channels, 1) for _ in range(num_levels))
        # gates[l] fuses level l with the fused levels above it (l = 0 .. L - 2)
        self.gates = nn.ModuleList(
            nn.Conv2d(2 * channels, 2, 1) for _ in range(num_levels - 1))

    def fuse(self, levels: Sequence[Tensor]) -> Tensor:
        """(R, channels, S, S) fused map of ``levels`` (L tensors (R, C_in, S, S), finest first)."""
        laterals = [conv(F.layer_norm(x, x.shape[1:]))
                    for conv, x in zip(self.laterals, levels)]
        fused = laterals[-1]
        for lvl in range(self.num_levels - 2, -1, -1):
            gate = self.gates[lvl](torch.cat([laterals[lvl], fused], dim=1))
            fused = gated_sum(laterals[lvl], fused, gate)
        return fused

    def forward(self, levels: List[Tensor]) -> Tensor:
        """(R, channels) pooled fused vector of each RoI."""
        return self.fuse(levels).mean(dim=(2, 3))
