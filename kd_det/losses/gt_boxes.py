"""Boxes of a batch as RoIs: ground-truth RoIs, features pooled over them, RoI classes.

mmdet does the work: ``bbox2roi`` makes the (K, 5) RoIs, a ``SingleRoIExtractor``
maps each box to its FPN level (``finest_scale``) and RoIAligns it there, and
``bbox_overlaps`` matches sampled RoIs to ground-truth boxes.
"""
import hashlib
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox2roi, bbox_overlaps, get_box_tensor
from torch import Tensor


def gt_rois(batch_data_samples: List[DetDataSample], device: torch.device) -> Tensor:
    """(K, 5) ``(image index, x1, y1, x2, y2)`` float32 RoIs of all ground-truth boxes."""
    return bbox2roi([get_box_tensor(s.gt_instances.bboxes).to(device, torch.float32)
                     for s in batch_data_samples])


def pool_instances(feats: List[Tensor], rois: Tensor, strides: Sequence[int],
                   finest_scale: float, output_size: int) -> Tensor:
    """(K, C) means of the RoIAligned features of K ``rois`` (K, 5) on levels (N, C, H_l, W_l).

    mmdet's ``SingleRoIExtractor`` does the work: each RoI is RoIAligned (aligned,
    ``output_size``) on the level of ``strides`` its size maps to (``finest_scale``), as
    the student's own RoI extractor does.
    """
    if rois.size(0) == 0:
        return feats[0].mean(dim=(2, 3))[:0]  # (0, C), still attached to the graph
    extractor = SingleRoIExtractor(
        roi_layer=dict(type='RoIAlign', output_size=output_size, sampling_ratio=0, aligned=True),
        out_channels=feats[0].size(1), featmap_strides=list(strides), finest_scale=finest_scale)
    # mmcv's CPU kernel reads the memory as contiguous NCHW whatever the strides
    return extractor([f.contiguous() for f in feats], rois).mean(dim=(2, 3))


def roi_labels(rois: Tensor, batch_data_samples: List[DetDataSample],
               iou_thr: float) -> Tensor:
    """(R, ) class of the ground-truth box each RoI overlaps most, -1 (background)
    where that IoU is below ``iou_thr`` or its image has no box."""
    labels = torch.full((rois.size(0), ), -1, dtype=torch.long, device=rois.device)
    for i, sample in enumerate(batch_data_samples):
        rows = torch.nonzero(rois[:, 0] == i).squeeze(1)
        boxes = get_box_tensor(sample.gt_instances.bboxes).to(rois.device, torch.float32)
        if rows.numel() == 0 or boxes.size(0) == 0:
            continue
        iou, best = bbox_overlaps(rois[rows, 1:], boxes).max(dim=1)
        gt_classes = sample.gt_instances.labels.to(rois.device)[best]
        labels[rows] = torch.where(iou >= iou_thr, gt_classes, labels[rows])
    return labels


def image_id_number(img_id) -> int:
    """A non-negative int standing for a dataset's ``img_id``: an integer id as it is
    (COCO), any other id (``'2008_000008'``, ``'street_cam0_a'``) by a stable 62-bit hash
    of its text, in [2**62, 2**63), the same on every rank and in every run."""
    if isinstance(img_id, Tensor) and img_id.numel() == 1:
        img_id = img_id.item()
    if isinstance(img_id, (int, np.integer)) and not isinstance(img_id, bool) and img_id >= 0:
        return int(img_id)
    digest = hashlib.blake2b(str(img_id).encode('utf-8'), digest_size=8).digest()
    return (int.from_bytes(digest, 'little') >> 2) | (1 << 62)


def image_ids(batch_data_samples: Optional[List[DetDataSample]], image_index: Tensor) -> Tensor:
    """(B, ) :func:`image_id_number` of the metainfo ``img_id`` of the image each row
    comes from (``image_index``: (B, ) position in the batch); -1 everywhere when a
    sample has no ``img_id``."""
    if batch_data_samples is None or any('img_id' not in s for s in batch_data_samples):
        return torch.full_like(image_index, -1)
    ids = torch.tensor([image_id_number(s.img_id) for s in batch_data_samples],
                       dtype=torch.long, device=image_index.device)
    return ids[image_index]


def check_level_strides(owner: str, strides, num_levels: int) -> None:
    """Raise naming ``owner`` unless ``strides`` is None or gives one stride per level."""
    if strides is not None and len(strides) != num_levels:
        raise ValueError(f'{owner}: {len(strides)} strides {tuple(strides)} for '
                         f'{num_levels} levels')
