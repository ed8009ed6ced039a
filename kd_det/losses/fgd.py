"""FGD, Focal and Global Knowledge Distillation (Yang et al., CVPR 2022) on neck levels.

What the loss receives (:class:`FGDLoss`): every paired neck level at once, student
(N, C, H_l, W_l) (after the distiller's connectors) and teacher (N, C, H_l, W_l), and the
batch's data samples (ground-truth boxes in input pixels, metainfo ``img_shape`` and
``batch_input_shape``). It owns one pair of GcBlocks per level, as the official code has
one loss module (with its own weights) per FPN level.

Per level, with the teacher's attention ``S_t`` (spatial) and ``C_t`` (channel):

- focal: ``alpha * sum(M_fg S_t C_t (F_s - F_t)^2) / N + beta * sum(M_bg S_t C_t
  (F_s - F_t)^2) / N``; ``M_fg`` is ``1 / (box height x width in cells)`` inside a
  ground-truth box (the largest value where boxes overlap), ``M_bg`` the indicator of
  ``M_fg = 0`` divided by its count per image;
- attention: ``gamma * (sum|C_s - C_t| + sum|S_s - S_t|) / N``;
- global: ``lambda * sum((F_s + GC_s(F_s)) - (F_t + GC_t(F_t)))^2 / N``, GC a GcBlock
  (mmcv's ``ContextBlock``: attention pooling, 1x1 conv to C / 2, LayerNorm, ReLU, 1x1
  conv back, the last zero-initialised). Both GcBlocks are trained by this term; the
  teacher's features are constants.

The arithmetic follows yzd-v/FGD, ``mmdet/distillation/losses/fgd.py`` at
c03a6cf3b3cb3cbfd5554dbf4766e7135747d22d. Two choices about the mask:

- ``swap_xy``: the initial release (04900add, 2021-11) filled the mask with a box's x
  range on rows and its y range on columns; c22b81d (2022-01) fixed it. Default
  ``False``, the boxes in their place (paper and pinned code); ``True`` reproduces the
  initial release.
- ``box_scale``: the official code scales boxes to the level by ``img_shape`` (the image
  before padding) while the level covers the padded batch, which stretches the boxes of
  a padded image. Default ``'batch_input_shape'`` (their true place on the level);
  ``'img_shape'`` is the official arithmetic. The two agree on unpadded images.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import ContextBlock
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor

from .receives import Receives
from .utils import check_level_lists, check_non_negative, float32_no_autocast, level_channels

BOX_SCALES = ('batch_input_shape', 'img_shape')


def fgd_attention(feat: Tensor, temp: float) -> Tuple[Tensor, Tensor]:
    """Spatial (N, H, W) and channel (N, C) attention of (N, C, H, W) features:
    ``H W softmax_HW(mean_C |F| / temp)`` and ``C softmax_C(mean_HW |F| / temp)``."""
    n, c, h, w = feat.shape
    value = feat.abs()
    spatial = h * w * torch.softmax(value.mean(dim=1).flatten(1) / temp, dim=1)
    channel = c * torch.softmax(value.mean(dim=(2, 3)) / temp, dim=1)
    return spatial.view(n, h, w), channel


def box_masks(boxes: Sequence[Tensor], scales: Sequence[Tuple[float, float]], size: Tuple[int, int],
              swap_xy: bool = False) -> Tuple[Tensor, Tensor]:
    """Foreground and background masks (N, H, W) of one level.

    Args:
        boxes: per image (K, 4) ``(x1, y1, x2, y2)`` boxes in input pixels.
        scales: per image ``(sy, sx)``, cells per input pixel along y and x.
        size: the level's ``(H, W)``.
        swap_xy: fill a box's x range on rows and its y range on columns (FGD's
            initial release).

    A box covers the cells ``floor(y1 sy) .. ceil(y2 sy)`` by ``floor(x1 sx) ..
    ceil(x2 sx)`` (inclusive, clipped to the level) with the value ``1 / (rows x
    columns)`` of the unclipped range; the largest value wins where boxes overlap. The
    background mask is 1 where the foreground is 0, divided by its count per image.
    """
    h, w = size
    device = boxes[0].device if len(boxes) else None
    rows = torch.arange(h, device=device, dtype=torch.float32)
    cols = torch.arange(w, device=device, dtype=torch.float32)
    fg = []
    for box, (sy, sx) in zip(boxes, scales):
        box = box.float()
        x1, x2 = torch.floor(box[:, 0] * sx), torch.ceil(box[:, 2] * sx)
        y1, y2 = torch.floor(box[:, 1] * sy), torch.ceil(box[:, 3] * sy)
        area = 1.0 / ((y2 - y1 + 1) * (x2 - x1 + 1))
        if swap_xy:
            x1, x2, y1, y2 = y1, y2, x1, x2
        in_rows = (rows >= y1[:, None]) & (rows <= y2[:, None])  # (K, H)
        in_cols = (cols >= x1[:, None]) & (cols <= x2[:, None])  # (K, W)
        inside = in_rows[:, :, None] & in_cols[:, None, :]
        values = torch.where(inside, area[:, None, None], torch.zeros_like(area)[:, None, None])
        fg.append(values.amax(dim=0) if box.size(0) else rows.new_zeros(h, w))
    fg = torch.stack(fg)
    bg = (fg == 0).float()
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp_min(1)
    return fg, bg


def fgd_focal_terms(student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor,
                    temp: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``(fg, bg, attention)`` losses of one level, each summed and divided by N.

    ``student``, ``teacher``: (N, C, H, W); ``fg``, ``bg``: (N, H, W) masks.
    """
    n = student.size(0)
    s_spatial, s_channel = fgd_attention(student, temp)
    t_spatial, t_channel = fgd_attention(teacher, temp)
    weighted = (student - teacher).pow(2) * t_spatial[:, None] * t_channel[:, :, None, None]
    fg_loss = (weighted * fg[:, None]).sum() / n
    bg_loss = (weighted * bg[:, None]).sum() / n
    attention = ((s_channel - t_channel).abs().sum() + (s_spatial - t_spatial).abs().sum()) / n
    return fg_loss, bg_loss, attention


@MODELS.register_module()
class FGDLoss(nn.Module):
    """FGD on every paired neck level: ``loss_weight * sum over levels of (alpha fg + beta
    bg + gamma attention + lambda global)`` (see the module docstring).

    Receives ``forward([student levels], [teacher levels], batch_data_samples)``, levels
    (N, C, H_l, W_l) of equal channels (the distiller's connectors bring the student's to
    the teacher's, as the official 1x1 ``align``).

    Args:
        in_channels, teacher_channels (int): level channels (derived; must be equal).
        num_levels (int): levels the loss is called with (derived).
        temp (float): attention temperature. Official: 0.5 (FCOS 0.8).
        alpha_fgd, beta_fgd, gamma_fgd, lambda_fgd (float): weights of the foreground,
            background, attention and global terms. Defaults: the official class's
            (configs/fgd/README.md lists the values of each detector's config).
        box_scale (str): ``'batch_input_shape'`` or ``'img_shape'`` (official).
        swap_xy (bool): the initial release's transposed mask.
        loss_weight (float): multiplies the whole loss. Defaults to 1.0.
    """

    receives = Receives(all_levels=True, data_samples=True, sources=('neck', ),
                        derived=('in_channels', 'teacher_channels', 'num_levels'))

    def __init__(self,
                 in_channels=None,
                 teacher_channels=None,
                 num_levels=None,
                 temp: float = 0.5,
                 alpha_fgd: float = 0.001,
                 beta_fgd: float = 0.0005,
                 gamma_fgd: float = 0.001,
                 lambda_fgd: float = 0.000005,
                 box_scale: str = 'batch_input_shape',
                 swap_xy: bool = False,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.channels, self.num_levels = level_channels('FGDLoss', in_channels,
                                                        teacher_channels, num_levels)
        if temp <= 0:
            raise ValueError(f'FGDLoss: temp must be > 0, got {temp!r}')
        if box_scale not in BOX_SCALES:
            raise ValueError(f'FGDLoss: box_scale={box_scale!r} is not one of {list(BOX_SCALES)}')
        self.temp = float(temp)
        self.alpha_fgd = check_non_negative(alpha_fgd, 'FGDLoss alpha_fgd')
        self.beta_fgd = check_non_negative(beta_fgd, 'FGDLoss beta_fgd')
        self.gamma_fgd = check_non_negative(gamma_fgd, 'FGDLoss gamma_fgd')
        self.lambda_fgd = check_non_negative(lambda_fgd, 'FGDLoss lambda_fgd')
        self.loss_weight = check_non_negative(loss_weight, 'FGDLoss loss_weight')
        self.box_scale = box_scale
        self.swap_xy = bool(swap_xy)
        # One GcBlock per level on each side; mmcv's ContextBlock returns x + GC(x).
        self.gc_student = nn.ModuleList(
            ContextBlock(self.channels, ratio=0.5) for _ in range(self.num_levels))
        self.gc_teacher = nn.ModuleList(
            ContextBlock(self.channels, ratio=0.5) for _ in range(self.num_levels))

    def _boxes_and_scales(self, batch_data_samples: List[DetDataSample], num_images: int,
                          device) -> Tuple[List[Tensor], List[Tuple[float, float]]]:
        """Per image its (K, 4) ground-truth boxes and ``(height, width)`` of the shape
        they are scaled from (``box_scale``)."""
        if batch_data_samples is None or len(batch_data_samples) != num_images:
            raise ValueError(
                f'FGDLoss needs one data sample with ground-truth boxes per image '
                f'({num_images}), got '
                f'{None if batch_data_samples is None else len(batch_data_samples)}')
        boxes, shapes = [], []
        for i, sample in enumerate(batch_data_samples):
            gt = sample.get('gt_instances')
            if gt is None or 'bboxes' not in gt:
                raise ValueError(f'FGDLoss: data sample {i} has no gt_instances.bboxes; FGD '
                                 'places its foreground mask on the ground-truth boxes')
            if self.box_scale not in sample.metainfo:
                raise ValueError(f'FGDLoss: data sample {i} has no metainfo {self.box_scale!r} '
                                 f"(box_scale={self.box_scale!r}); mmdet's DetDataPreprocessor "
                                 'sets batch_input_shape and the pipeline img_shape')
            boxes.append(get_box_tensor(gt.bboxes).to(device, torch.float32))
            shapes.append(tuple(sample.metainfo[self.box_scale][:2]))
        return boxes, shapes

    def forward(self, student: List[Tensor], teacher: List[Tensor],
                batch_data_samples: List[DetDataSample]) -> Tensor:
        """student, teacher: lists of (N, C, H_l, W_l) levels. Returns the weighted
        scalar loss, summed over the levels."""
        check_level_lists('FGDLoss', student, teacher, self.num_levels, self.channels)
        boxes, shapes = self._boxes_and_scales(batch_data_samples, student[0].size(0),
                                               student[0].device)
        total = student[0].new_zeros((), dtype=torch.float32)
        with float32_no_autocast(student[0]):
            for lvl, (s, t) in enumerate(zip(student, teacher)):
                s, t = s.float(), t.detach().float()
                h, w = s.shape[2:]
                fg, bg = box_masks(boxes, [(h / sh, w / sw) for sh, sw in shapes], (h, w),
                                   self.swap_xy)
                fg_loss, bg_loss, attention = fgd_focal_terms(s, t, fg, bg, self.temp)
                relation = (self.gc_student[lvl](s) - self.gc_teacher[lvl](t)).pow(2).sum()
                total = total + (self.alpha_fgd * fg_loss + self.beta_fgd * bg_loss
                                 + self.gamma_fgd * attention
                                 + self.lambda_fgd * relation / s.size(0))
        return total * self.loss_weight
