"""Ground-truth boxes as RoIs, their FPN levels, and features pooled over them.

Shared by the instance modes of RRD (one embedding per box) and UniKD (one
Gaussian per box).
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from mmcv.ops import roi_align
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor


def map_boxes_to_levels(boxes: Tensor, num_levels: int, finest_scale: float) -> Tensor:
    """FPN level of each (K, 4) xyxy box, as mmdet's ``SingleRoIExtractor``.

    Level ``floor(log2(sqrt(w * h) / finest_scale))`` clamped to
    ``[0, num_levels - 1]``: boxes below ``2 * finest_scale`` go to level 0.
    """
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def pool_instances(feats: List[Tensor], rois: Tensor, levels: Tensor, strides: Sequence[int],
                   output_size: int) -> Tensor:
    """(K, C) vectors of K rois: RoIAlign (aligned) on each roi's level, then the mean.

    Args:
        feats (List[Tensor]): Levels, each (N, C, H_l, W_l).
        rois (Tensor): (K, 5) ``(image index, x1, y1, x2, y2)`` in input pixels.
        levels (Tensor): (K, ) level of each roi.
        strides (Sequence[int]): Stride of each level.
        output_size (int): RoIAlign output size.
    """
    pooled, order = [], []
    for lvl, stride in enumerate(strides):
        inds = torch.nonzero(levels == lvl).squeeze(1)
        if inds.numel() == 0:
            continue
        # mmcv's CPU kernel reads the memory as contiguous NCHW whatever the strides
        out = roi_align(feats[lvl].contiguous(), rois[inds], output_size, 1. / stride, 0,
                        'avg', True)
        pooled.append(out.mean(dim=(2, 3)))
        order.append(inds)
    if not order:
        return feats[0].mean(dim=(2, 3))[:0]  # (0, C), still attached to the graph
    return torch.cat(pooled)[torch.argsort(torch.cat(order))]


def gt_rois(batch_data_samples: List[DetDataSample], device: torch.device) -> Tensor:
    """(K, 5) ``(image index, x1, y1, x2, y2)`` float32 rois of all ground-truth boxes."""
    return torch.cat([
        F.pad(get_box_tensor(sample.gt_instances.bboxes).to(device, torch.float32), (1, 0),
              value=float(i)) for i, sample in enumerate(batch_data_samples)
    ])


def check_level_strides(owner: str, strides, num_levels: int) -> None:
    """Raise naming ``owner`` unless ``strides`` is None or gives one stride per level."""
    if strides is not None and len(strides) != num_levels:
        raise ValueError(f'{owner}: {len(strides)} strides {tuple(strides)} for '
                         f'{num_levels} levels')
