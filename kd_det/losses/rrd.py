"""Relational Representation Distillation (RRD) on FPN features.

Giakoumoglou and Stathaki, "Relational Representation Distillation",
arXiv 2407.12073. The student matches, through a softmax over a FIFO memory
of teacher embeddings, the teacher's (sharper) similarity distribution to the
same memory.

Adapted to detection (see :class:`RRDLoss`): embeddings per image or per
ground-truth box; by default each embedding relates only to entries of other
images (the official code keeps its own entry in the memory, which makes the
teacher target one-hot on it), and the loss is logged as a KL (floor 0).
:func:`teacher_target_statistics` measures the target's entropy;
tools/analysis/rrd_target_entropy.py runs it on a teacher's features.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from torch import Tensor

from .gt_boxes import check_level_strides, gt_rois, map_boxes_to_levels, pool_instances
from .rrd_memory import EXCLUDE, enqueue, gather_variable_rows, related_entries
from .utils import float32_no_autocast


def relational_distribution_loss(student_emb: Tensor,
                                 teacher_emb: Tensor,
                                 memory: Tensor,
                                 student_tau: float,
                                 teacher_tau: float,
                                 valid: Optional[Tensor] = None,
                                 divergence: str = 'kl') -> Tensor:
    """Divergence between teacher and student similarity distributions over a memory.

    Args:
        student_emb (Tensor): L2-normalised student embeddings, (B, D).
        teacher_emb (Tensor): L2-normalised teacher embeddings, (B, D).
        memory (Tensor): Teacher embeddings to relate to, (K, D).
        student_tau (float): Temperature of the student softmax.
        teacher_tau (float): Temperature of the teacher softmax (no gradient).
        valid (Tensor, optional): (B, K) bool, the entries each row relates to
            (both softmaxes run over them only). All entries when None.
        divergence (str): ``'kl'``, ``KL(p_t || p_s)``, or ``'cross_entropy'``,
            ``-sum_k p_t log p_s`` (the official loss): the same gradient; the
            KL is the cross-entropy less the teacher entropy, so its floor is 0.

    Returns:
        Tensor: The divergence averaged over the rows that relate to at least
        one entry; 0 (still attached to the graph) when there is none.
    """
    memory = memory.detach()
    if valid is None:
        valid = memory.new_ones(student_emb.size(0), memory.size(0), dtype=torch.bool)
    rows = valid.any(dim=1)
    if not bool(rows.any()):
        return student_emb.sum() * 0
    valid = valid[rows]
    log_p_s = F.log_softmax(
        (student_emb[rows] @ memory.t() / student_tau).masked_fill(~valid, float('-inf')), dim=1)
    log_p_t = F.log_softmax(
        (teacher_emb[rows].detach() @ memory.t() / teacher_tau).masked_fill(
            ~valid, float('-inf')), dim=1)
    p_t = log_p_t.exp()
    log_ratio = log_p_s if divergence == 'cross_entropy' else log_p_s - log_p_t
    return -(p_t * log_ratio.masked_fill(~valid, 0)).sum(dim=1).mean()


@torch.no_grad()
def teacher_target_statistics(teacher_emb: Tensor,
                              memory: Tensor,
                              teacher_tau: float,
                              valid: Optional[Tensor] = None,
                              own_slots: Optional[Tensor] = None) -> Dict[str, float]:
    """How peaked the teacher target ``p_t = softmax(e_t Q^T / teacher_tau)`` is.

    Args:
        teacher_emb (Tensor): L2-normalised teacher embeddings, (B, D).
        memory (Tensor): Memory ``Q``, (K, D).
        teacher_tau (float): Teacher temperature.
        valid (Tensor, optional): (B, K) bool mask as in
            :func:`relational_distribution_loss`.
        own_slots (Tensor, optional): (B, ) memory slot of each row's own
            embedding, -1 where it is not in the memory.

    Returns:
        dict: Means over the rows that relate to at least one entry (``rows``):
        ``entropy`` (nats), ``max_weight`` (the largest weight of a row) and
        ``self_weight`` (the weight on the row's own entry, 0 where it is
        excluded or absent).
    """
    if valid is None:
        valid = memory.new_ones(teacher_emb.size(0), memory.size(0), dtype=torch.bool)
    if own_slots is None:
        own_slots = torch.full((teacher_emb.size(0), ), -1, dtype=torch.long,
                               device=teacher_emb.device)
    rows = valid.any(dim=1)
    if not bool(rows.any()):
        return dict(rows=0, entropy=0., max_weight=0., self_weight=0.)
    valid, own_slots = valid[rows], own_slots[rows]
    log_p = F.log_softmax(
        (teacher_emb[rows] @ memory.t() / teacher_tau).masked_fill(~valid, float('-inf')), dim=1)
    p = log_p.exp()
    entropy = -(p * log_p.masked_fill(~valid, 0)).sum(dim=1)
    own = torch.where(own_slots >= 0, p.gather(1, own_slots.clamp(min=0)[:, None])[:, 0],
                      torch.zeros_like(entropy))
    return dict(rows=int(rows.sum()), entropy=entropy.mean().item(),
                max_weight=p.max(dim=1).values.mean().item(), self_weight=own.mean().item())


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

    Memory (:mod:`kd_det.losses.rrd_memory`): a FIFO queue of ``queue_size``
    teacher embeddings (buffers ``queue``, ``queue_ids`` (the image id of each
    entry), ``queue_ptr``, ``queue_len``: saved in checkpoints, so resuming is
    exact). Each step first enqueues the teacher embeddings of all ranks
    (variable counts, gathered in rank order; only the newest ``queue_size``
    when more arrive), writing at ``queue_ptr`` and wrapping around, and then
    relates the local embeddings to the filled part of the queue. Unlike the
    official code, which starts from random entries, slots never written are
    left out of the softmax, so the loss only ever relates to real teacher
    embeddings.

    Exclusion (``exclude``, our adaptation to detection): in the official code
    each embedding's own entry is in the memory it relates to. With the
    official ``teacher_tau`` of 0.02 the teacher target then puts 0.99 of its
    weight on that entry on the demo's boxes (entropy 0.04 nats): the loss
    becomes instance discrimination, against RRD's stated intent of matching
    similarities without strict negative instance differentiation.

    - ``'image'`` (default): each embedding relates only to entries of *other*
      images (by ``img_id`` of the data samples' metainfo, also for entries
      enqueued in earlier steps: a queue longer than an epoch's boxes holds
      the previous epoch's copy of every box, identical or flipped).
    - ``'self'``: only the embedding's own entry of this step is left out.
    - ``'none'``: the official behaviour.

    Rows with no entry to relate to (e.g. the first step of a single image)
    add nothing; a step where no row has one gives 0, still in the graph.

    Teacher temperature: measured on the demo (shipped teacher, 600 training
    images, 2 epochs, 4096-entry memory; tools/analysis/rrd_target_entropy.py),
    with ``exclude='image'`` the target's entropy is 2.1-2.9 nats at 0.02
    (largest weight 0.29-0.43: a few near-duplicates), 4.7-5.9 at 0.05
    (largest weight 0.04-0.11) and 6.1-7.3 at 0.1, against log K = 8.0-8.3
    for a uniform target. The default, 0.05, relates each box to a
    neighbourhood of a few hundred similar boxes, not to its nearest copies.

    Divergence (``divergence``): ``'kl'`` (default) logs ``KL(p_t || p_s)``,
    whose floor is 0; ``'cross_entropy'`` the official ``-sum p_t log p_s``,
    which is the KL plus the teacher entropy. Both have the same gradient; its
    size relative to the detection losses is set by ``loss_weight``.

    Args:
        in_channels (int): Channels of each student level.
        teacher_channels (int): Channels of each teacher level.
        num_levels (int): Number of levels the loss is called with.
        mode (str): ``'image'`` or ``'instance'``.
        embed_dim (int): Projection dimension. Defaults to 128.
        queue_size (int): Memory size. Defaults to 16384.
        student_tau (float): Student temperature. Defaults to 0.1.
        teacher_tau (float): Teacher temperature. Defaults to 0.05 (the
            official code: 0.02; see above).
        exclude (str): ``'image'``, ``'self'`` or ``'none'`` (see above).
        divergence (str): ``'kl'`` or ``'cross_entropy'`` (see above).
        strides (Sequence[int], optional): Strides of the levels; needed in
            ``'instance'`` mode (the distiller sets them).
        finest_scale (float, optional): Box scale mapped to level 0; needed in
            ``'instance'`` mode (the distiller sets it from the student's RoI
            extractor).
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
                 teacher_tau: float = 0.05,
                 exclude: str = 'image',
                 divergence: str = 'kl',
                 strides: Optional[Sequence[int]] = None,
                 finest_scale: Optional[float] = None,
                 roi_output_size: int = 7,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        if loss_weight < 0:
            raise ValueError(f'RRDLoss: loss_weight must be >= 0, got {loss_weight}')
        if mode not in ('image', 'instance'):
            raise ValueError(f"RRDLoss: mode must be 'image' or 'instance', got {mode!r}")
        if exclude not in EXCLUDE:
            raise ValueError(f'RRDLoss: exclude must be one of {EXCLUDE}, got {exclude!r}')
        if divergence not in ('kl', 'cross_entropy'):
            raise ValueError(f"RRDLoss: divergence must be 'kl' or 'cross_entropy', "
                             f'got {divergence!r}')
        if student_tau <= 0 or teacher_tau <= 0:
            raise ValueError(f'RRDLoss: temperatures must be > 0, got student_tau='
                             f'{student_tau}, teacher_tau={teacher_tau}')
        if queue_size < 1:
            raise ValueError(f'RRDLoss: queue_size must be >= 1, got {queue_size}')
        check_level_strides('RRDLoss', strides, num_levels)
        if mode == 'instance' and finest_scale is None:
            raise ValueError("RRDLoss(mode='instance') needs finest_scale: the distiller "
                             "sets it from the student's RoI extractor; give it explicitly "
                             'when calling the loss standalone')
        if mode == 'instance' and strides is None:
            raise ValueError("RRDLoss(mode='instance') needs strides: the distiller sets "
                             'them from the paired levels; give them explicitly when '
                             'calling the loss standalone')
        self.in_channels = in_channels
        self.teacher_channels = teacher_channels
        self.num_levels = num_levels
        self.mode = mode
        self.student_tau = student_tau
        self.teacher_tau = teacher_tau
        self.exclude = exclude
        self.divergence = divergence
        self.strides = None if strides is None else tuple(strides)
        self.finest_scale = finest_scale
        self.roi_output_size = roi_output_size
        self.loss_weight = loss_weight

        levels_in_vector = num_levels if mode == 'image' else 1
        self.student_head = nn.Linear(in_channels * levels_in_vector, embed_dim)
        self.teacher_head = nn.Linear(teacher_channels * levels_in_vector, embed_dim)
        self.teacher_head.requires_grad_(False)
        self.register_buffer('queue', torch.zeros(queue_size, embed_dim))
        self.register_buffer('queue_ids', torch.full((queue_size, ), -1, dtype=torch.long))
        self.register_buffer('queue_ptr', torch.zeros((), dtype=torch.long))
        self.register_buffer('queue_len', torch.zeros((), dtype=torch.long))

    def _check_side(self, feats: List[Tensor], channels: int, side: str) -> None:
        if len(feats) != self.num_levels:
            raise ValueError(f'RRDLoss was built for {self.num_levels} levels, got '
                             f'{len(feats)} {side} levels')
        for lvl, f in enumerate(feats):
            if f.dim() != 4 or f.size(1) != channels:
                raise ValueError(f'RRDLoss level {lvl}: expected {side} (N, {channels}, H, W), '
                                 f'got {tuple(f.shape)}')

    def _check_samples(self, batch_data_samples: Optional[List[DetDataSample]],
                       num_images: int) -> None:
        needs = ["mode='instance'"] if self.mode == 'instance' else []
        needs += ["exclude='image'"] if self.exclude == 'image' else []
        if needs and (batch_data_samples is None or len(batch_data_samples) != num_images):
            raise ValueError(f'RRDLoss {" and ".join(needs)} needs one data sample per image '
                             f'({num_images}), got '
                             f'{None if batch_data_samples is None else len(batch_data_samples)}')
        if self.exclude == 'image':
            missing = [i for i, s in enumerate(batch_data_samples) if 'img_id' not in s]
            if missing:
                raise ValueError(f"RRDLoss exclude='image' needs metainfo img_id in every data "
                                 f'sample; samples {missing} have none (pass exclude='
                                 f"'self' or 'none' otherwise)")

    def _rois(self, batch_data_samples: Optional[List[DetDataSample]],
              device: torch.device) -> Optional[Tensor]:
        return gt_rois(batch_data_samples, device) if self.mode == 'instance' else None

    def _vectors(self, feats: List[Tensor], rois: Optional[Tensor]) -> Tensor:
        """(N, L * C) per-level global means ('image') or (K, C) box vectors ('instance')."""
        if rois is None:
            return torch.cat([f.mean(dim=(2, 3)) for f in feats], dim=1)
        levels = map_boxes_to_levels(rois[:, 1:], self.num_levels, self.finest_scale)
        return pool_instances(feats, rois, levels, self.strides, self.roi_output_size)

    def _image_ids(self, batch_data_samples: Optional[List[DetDataSample]],
                   rois: Optional[Tensor], num_images: int, device: torch.device) -> Tensor:
        """(B, ) image id (metainfo ``img_id``) of each embedding; -1 where unknown."""
        if batch_data_samples is None or any('img_id' not in s for s in batch_data_samples):
            ids = torch.full((num_images, ), -1, dtype=torch.long, device=device)
        else:
            ids = torch.tensor([int(s.img_id) for s in batch_data_samples], device=device)
        return ids if rois is None else ids[rois[:, 0].long()]

    @torch.no_grad()
    def _teacher_side(self, teacher: List[Tensor], rois: Optional[Tensor],
                      image_ids: Tensor) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
        """Embed the teacher vectors, enqueue those of all ranks, and return the (B, D)
        embeddings, the (K, D) memory, the (B, K) mask of the entries each embedding
        relates to (None: all) and the (B, ) slot of each embedding's own entry."""
        teacher_emb = F.normalize(self.teacher_head(self._vectors(teacher, rois)), dim=1)
        keys, offset = gather_variable_rows(teacher_emb)
        key_ids, _ = gather_variable_rows(image_ids)
        own_slots = enqueue(self.queue, self.queue_ids, self.queue_ptr, self.queue_len, keys,
                            key_ids)[offset:offset + teacher_emb.size(0)]
        size = int(self.queue_len)
        valid = related_entries(self.queue_ids[:size], image_ids, own_slots, self.exclude)
        return teacher_emb, self.queue[:size], valid, own_slots

    @torch.no_grad()
    def measure_teacher_target(
            self,
            teacher_feats: List[Tensor],
            batch_data_samples: Optional[List[DetDataSample]] = None) -> Dict[str, float]:
        """Run the teacher side of one step (embeddings, memory update) and return
        :func:`teacher_target_statistics` of its target; the student is not needed."""
        self._check_side(teacher_feats, self.teacher_channels, 'teacher')
        num_images = teacher_feats[0].size(0)
        self._check_samples(batch_data_samples, num_images)
        teacher = [f.float() for f in teacher_feats]
        rois = self._rois(batch_data_samples, teacher[0].device)
        image_ids = self._image_ids(batch_data_samples, rois, num_images, teacher[0].device)
        teacher_emb, memory, valid, own_slots = self._teacher_side(teacher, rois, image_ids)
        return teacher_target_statistics(teacher_emb, memory, self.teacher_tau, valid,
                                         own_slots)

    def forward(self,
                student_feats: List[Tensor],
                teacher_feats: List[Tensor],
                batch_data_samples: Optional[List[DetDataSample]] = None) -> Tensor:
        """Weighted RRD loss.

        Args:
            student_feats (List[Tensor]): Student levels, each (N, C_s, H_l, W_l).
            teacher_feats (List[Tensor]): Teacher levels, each (N, C_t, H_l, W_l).
            batch_data_samples (List[DetDataSample], optional): Samples with
                ``gt_instances.bboxes`` in input-image coordinates (``'instance'``
                mode) and metainfo ``img_id`` (``exclude='image'``).

        Returns:
            Tensor: Scalar float32 loss multiplied by ``loss_weight``.
        """
        self._check_side(student_feats, self.in_channels, 'student')
        self._check_side(teacher_feats, self.teacher_channels, 'teacher')
        for lvl, (s, t) in enumerate(zip(student_feats, teacher_feats)):
            if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
                raise ValueError(f'RRDLoss level {lvl}: student {tuple(s.shape)} and teacher '
                                 f'{tuple(t.shape)} differ in N, H or W')
        num_images = student_feats[0].size(0)
        self._check_samples(batch_data_samples, num_images)
        with float32_no_autocast(student_feats[0]):
            student = [f.float() for f in student_feats]
            teacher = [f.detach().float() for f in teacher_feats]
            rois = self._rois(batch_data_samples, student[0].device)
            image_ids = self._image_ids(batch_data_samples, rois, num_images,
                                        student[0].device)
            student_emb = F.normalize(self.student_head(self._vectors(student, rois)), dim=1)
            teacher_emb, memory, valid, _ = self._teacher_side(teacher, rois, image_ids)
            loss = relational_distribution_loss(student_emb, teacher_emb, memory,
                                                self.student_tau, self.teacher_tau, valid,
                                                self.divergence)
        return loss * self.loss_weight
