"""Relational Representation Distillation (RRD) on FPN features.

Giakoumoglou and Stathaki, "Relational Representation Distillation",
arXiv 2407.12073. The student matches, through a softmax over a FIFO memory
of teacher embeddings, the teacher's (sharper) similarity distribution to the
same memory.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.ops import roi_align
from mmengine.dist import all_gather, get_world_size
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor

from .utils import float32_no_autocast


def relational_distribution_loss(student_emb: Tensor, teacher_emb: Tensor, memory: Tensor,
                                 student_tau: float, teacher_tau: float) -> Tensor:
    """Cross-entropy between teacher and student similarity distributions over a memory.

    Args:
        student_emb (Tensor): L2-normalised student embeddings, (B, D).
        teacher_emb (Tensor): L2-normalised teacher embeddings, (B, D).
        memory (Tensor): Teacher embeddings to relate to, (K, D), K >= 1.
        student_tau (float): Temperature of the student softmax.
        teacher_tau (float): Temperature of the teacher softmax (no gradient).

    Returns:
        Tensor: ``-(1/B) sum_b sum_k p_t log p_s``; 0 (still attached to the
        graph) when B is 0.
    """
    memory = memory.detach()
    p_t = F.softmax(teacher_emb.detach() @ memory.t() / teacher_tau, dim=1)
    log_p_s = F.log_softmax(student_emb @ memory.t() / student_tau, dim=1)
    return -(p_t * log_p_s).sum() / max(student_emb.size(0), 1)


def map_boxes_to_levels(boxes: Tensor, num_levels: int, finest_scale: float) -> Tensor:
    """FPN level of each (K, 4) xyxy box, as mmdet's ``SingleRoIExtractor``.

    Level ``floor(log2(sqrt(w * h) / finest_scale))`` clamped to
    ``[0, num_levels - 1]``: boxes below ``2 * finest_scale`` go to level 0.
    """
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def gather_variable_rows(x: Tensor) -> Tensor:
    """Concatenate, in rank order, the (n_r, D) tensors of all ranks (n_r may differ).

    Identity when not distributed. Every rank must call it, also with n_r = 0.
    """
    if get_world_size() == 1:
        return x
    sizes = all_gather(torch.tensor([x.size(0)], device=x.device))
    sizes = [int(s.item()) for s in sizes]
    padded = x.new_zeros((max(sizes), ) + tuple(x.shape[1:]))
    padded[:x.size(0)] = x
    gathered = all_gather(padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)])


@MODELS.register_module()
class RRDLoss(nn.Module):
    """RRD loss between student and teacher multi-level (FPN) features.

    Embeddings (``mode``):

    - ``'image'``: per level global average pooling, concatenated over levels
      (levels keep their own statistics instead of being mixed by a sum): one
      ``num_levels * C`` vector per image.
    - ``'instance'``: one vector per ground-truth box: RoIAlign
      (``roi_output_size``, aligned) on the FPN level chosen by the box size as
      mmdet's RoI extractor does (``finest_scale``), then average pooling.
      Images without boxes contribute nothing; a batch without any box gives 0.

    Linear heads map student and teacher vectors to ``embed_dim``; both outputs
    are L2-normalised. As in the official code the teacher side of the loss is
    detached, so the teacher head would never receive a gradient: it is a
    fixed random projection, frozen here (``requires_grad=False``) so that DDP
    needs no ``find_unused_parameters``; it still lives in checkpoints. Being
    fixed, it also keeps the memory's old entries consistent with new ones.

    Memory: a FIFO queue of ``queue_size`` teacher embeddings (buffers
    ``queue``, ``queue_ptr``, ``queue_len``: saved in checkpoints, so resuming
    is exact). Each step first enqueues the teacher embeddings of all ranks
    (variable counts, gathered in rank order; only the newest ``queue_size``
    when more arrive), writing at ``queue_ptr`` and wrapping around, and then
    relates the local embeddings to the filled part of the queue. Unlike the
    official code, which starts from random entries, slots never written are
    left out of the softmax, so the loss only ever relates to real teacher
    embeddings (the queue fills from slot 0, so the filled part is the first
    ``queue_len`` slots).

    Args:
        in_channels (int): Channels of each student level.
        teacher_channels (int): Channels of each teacher level.
        num_levels (int): Number of levels the loss is called with.
        mode (str): ``'image'`` or ``'instance'``.
        embed_dim (int): Projection dimension. Defaults to 128.
        queue_size (int): Memory size. Defaults to 16384.
        student_tau (float): Student temperature. Defaults to 0.1.
        teacher_tau (float): Teacher temperature. Defaults to 0.02.
        strides (Sequence[int]): Strides of the levels (``'instance'`` mode).
        finest_scale (float): Box scale mapped to level 0 (``'instance'``).
        roi_output_size (int): RoIAlign output size (``'instance'``).
        loss_weight (float): Weight of the loss. Defaults to 1.0.
    """

    multi_level = True

    def __init__(self,
                 in_channels: int = 256,
                 teacher_channels: int = 256,
                 num_levels: int = 5,
                 mode: str = 'image',
                 embed_dim: int = 128,
                 queue_size: int = 16384,
                 student_tau: float = 0.1,
                 teacher_tau: float = 0.02,
                 strides: Sequence[int] = (4, 8, 16, 32, 64),
                 finest_scale: float = 56.,
                 roi_output_size: int = 7,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if loss_weight < 0:
            raise ValueError(f'RRDLoss: loss_weight must be >= 0, got {loss_weight}')
        if mode not in ('image', 'instance'):
            raise ValueError(f"RRDLoss: mode must be 'image' or 'instance', got {mode!r}")
        if student_tau <= 0 or teacher_tau <= 0:
            raise ValueError(f'RRDLoss: temperatures must be > 0, got student_tau='
                             f'{student_tau}, teacher_tau={teacher_tau}')
        if queue_size < 1:
            raise ValueError(f'RRDLoss: queue_size must be >= 1, got {queue_size}')
        if mode == 'instance' and len(strides) != num_levels:
            raise ValueError(f'RRDLoss: {len(strides)} strides {tuple(strides)} for '
                             f'{num_levels} levels')
        self.in_channels = in_channels
        self.teacher_channels = teacher_channels
        self.num_levels = num_levels
        self.mode = mode
        self.student_tau = student_tau
        self.teacher_tau = teacher_tau
        self.strides = tuple(strides)
        self.finest_scale = finest_scale
        self.roi_output_size = roi_output_size
        self.loss_weight = loss_weight

        levels_in_vector = num_levels if mode == 'image' else 1
        self.student_head = nn.Linear(in_channels * levels_in_vector, embed_dim)
        self.teacher_head = nn.Linear(teacher_channels * levels_in_vector, embed_dim)
        self.teacher_head.requires_grad_(False)
        self.register_buffer('queue', torch.zeros(queue_size, embed_dim))
        self.register_buffer('queue_ptr', torch.zeros((), dtype=torch.long))
        self.register_buffer('queue_len', torch.zeros((), dtype=torch.long))

    def _check_inputs(self, student_feats: List[Tensor], teacher_feats: List[Tensor],
                      batch_data_samples: Optional[List[DetDataSample]]) -> None:
        if len(student_feats) != self.num_levels or len(teacher_feats) != self.num_levels:
            raise ValueError(f'RRDLoss was built for {self.num_levels} levels, got '
                             f'{len(student_feats)} student and {len(teacher_feats)} '
                             f'teacher levels')
        if self.mode == 'instance' and (batch_data_samples is None or
                                        len(batch_data_samples) != student_feats[0].size(0)):
            raise ValueError(f"RRDLoss mode='instance' needs one data sample per image "
                             f'({student_feats[0].size(0)}), got '
                             f'{None if batch_data_samples is None else len(batch_data_samples)}')
        for lvl, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            if (s.dim() != 4 or t.dim() != 4 or s.size(1) != self.in_channels
                    or t.size(1) != self.teacher_channels or s.shape[0] != t.shape[0]
                    or s.shape[2:] != t.shape[2:]):
                raise ValueError(
                    f'RRDLoss level {lvl}: expected student (N, {self.in_channels}, H, W) '
                    f'and teacher (N, {self.teacher_channels}, H, W), got '
                    f'{tuple(s.shape)} and {tuple(t.shape)}')

    def _image_vectors(self, feats: List[Tensor]) -> Tensor:
        """(N, L * C): per-level global average pooling, concatenated."""
        return torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)

    def _instance_vectors(self, student_feats: List[Tensor], teacher_feats: List[Tensor],
                          batch_data_samples: List[DetDataSample]) -> Tuple[Tensor, Tensor]:
        """(K, C) student and teacher vectors of the K ground-truth boxes of the batch."""
        device = student_feats[0].device
        rois = torch.cat([
            F.pad(get_box_tensor(sample.gt_instances.bboxes).to(device, torch.float32),
                  (1, 0), value=float(i)) for i, sample in enumerate(batch_data_samples)
        ])
        levels = map_boxes_to_levels(rois[:, 1:], self.num_levels, self.finest_scale)
        student_out, teacher_out, order = [], [], []
        for lvl, stride in enumerate(self.strides):
            inds = torch.nonzero(levels == lvl).squeeze(1)
            if inds.numel() == 0:
                continue
            for feat, out in ((student_feats[lvl], student_out),
                              (teacher_feats[lvl], teacher_out)):
                pooled = roi_align(feat, rois[inds], self.roi_output_size, 1. / stride, 0,
                                   'avg', True)
                out.append(pooled.mean(dim=(2, 3)))
            order.append(inds)
        if not order:
            # Keep the student features in the graph (zero vectors, zero gradient).
            empty = student_feats[0].sum() * 0
            return (empty + student_feats[0].new_zeros(0, self.in_channels),
                    teacher_feats[0].new_zeros(0, self.teacher_channels))
        inverse = torch.argsort(torch.cat(order))
        return torch.cat(student_out)[inverse], torch.cat(teacher_out)[inverse]

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Write (n, D) ``keys`` at ``queue_ptr`` (wrapping around); oldest out first."""
        size = self.queue.size(0)
        keys = keys[-size:]
        n = keys.size(0)
        if n == 0:
            return
        ptr = int(self.queue_ptr)
        slots = (ptr + torch.arange(n, device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + n) % size)
        self.queue_len.fill_(min(int(self.queue_len) + n, size))

    def forward(self,
                student_feats: List[Tensor],
                teacher_feats: List[Tensor],
                batch_data_samples: Optional[List[DetDataSample]] = None) -> Tensor:
        """Weighted RRD loss.

        Args:
            student_feats (List[Tensor]): Student levels, each (N, C_s, H_l, W_l).
            teacher_feats (List[Tensor]): Teacher levels, each (N, C_t, H_l, W_l).
            batch_data_samples (List[DetDataSample], optional): Samples with
                ``gt_instances.bboxes`` in input-image coordinates; needed in
                ``'instance'`` mode only.

        Returns:
            Tensor: Scalar float32 loss multiplied by ``loss_weight``.
        """
        self._check_inputs(student_feats, teacher_feats, batch_data_samples)
        with float32_no_autocast(student_feats[0]):
            student = [f.float() for f in student_feats]
            teacher = [f.detach().float() for f in teacher_feats]
            if self.mode == 'image':
                student_vec = self._image_vectors(student)
                teacher_vec = self._image_vectors(teacher)
            else:
                student_vec, teacher_vec = self._instance_vectors(student, teacher,
                                                                  batch_data_samples)
            student_emb = F.normalize(self.student_head(student_vec), dim=1)
            with torch.no_grad():
                teacher_emb = F.normalize(self.teacher_head(teacher_vec), dim=1)
            self._enqueue(gather_variable_rows(teacher_emb))
            memory = self.queue[:int(self.queue_len)]
            loss = relational_distribution_loss(student_emb, teacher_emb, memory,
                                                self.student_tau, self.teacher_tau)
        return loss * self.loss_weight
