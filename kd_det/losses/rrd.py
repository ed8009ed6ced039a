"""Relational Representation Distillation (RRD) on a detector's embeddings.

Giakoumoglou and Stathaki, "Relational Representation Distillation",
arXiv 2407.12073. The student matches, through a softmax over a FIFO memory
of teacher embeddings, the teacher's (sharper) similarity distribution to the
same memory.

What the loss receives (see :class:`RRDLoss`): by default (``source='roi_embed'``)
the embeddings the two box heads classify, (R, D_s) and (R, D_t), on the
student's sampled RoIs (``rois``), the detector analogue of the paper's pooled
penultimate features; or feature levels (``source='neck'``), pooled per
ground-truth box or per image. Each embedding relates only to entries of other
images by default (the official code keeps its own entry in the memory, which
makes the teacher target one-hot on it), and the loss is logged as a KL
(floor 0). :func:`teacher_target_statistics` measures the target;
tools/analysis/rrd_target_entropy.py runs it on a teacher and a dataset.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from torch import Tensor

from .gt_boxes import (check_level_strides, gt_rois, image_ids, pool_instances,
                       roi_labels)
from .receives import Receives
from .rrd_memory import EXCLUDE, enqueue, gather_variable_rows, related_entries
from .utils import check_non_negative, float32_no_autocast


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
    """RRD loss between student and teacher embeddings (RoI rows or feature levels).

    What it relates (one embedding per row):

    - **RoI embeddings** (``source='roi_embed'``, the default recipe for
      two-stage students): ``forward(student (R, D_s), teacher (R, D_t), rois,
      batch_data_samples)``, the classifier inputs of both box heads on the
      student's R sampled RoIs. Rows kept: every positive RoI (IoU >=
      ``pos_iou_thr`` with a ground-truth box of its image) and the first
      ``num_negatives`` negatives of each image (the sampler already shuffled
      them); ``None`` keeps every row.
    - **Feature levels** (``source='neck'``, ``mode``): ``forward([levels],
      [levels], batch_data_samples)``. ``'instance'``: one vector per
      ground-truth box, RoIAligned (``roi_output_size``) on the level mmdet's
      RoI extractor maps it to (``finest_scale``), then averaged; ``'image'``:
      per-level global means, concatenated (``num_levels * C``).

    Linear heads map student and teacher vectors to ``embed_dim``; both outputs
    are L2-normalised. As in the official code the teacher side of the loss is
    detached, so the teacher head would never receive a gradient: it is a
    fixed random projection, frozen (``requires_grad=False``) so that DDP
    needs no ``find_unused_parameters``; it still lives in checkpoints. Being
    fixed, it also keeps the memory's old entries consistent with new ones.

    Memory (:mod:`kd_det.losses.rrd_memory`): a FIFO queue of ``queue_size``
    teacher embeddings (buffers ``queue``, ``queue_ids`` (the image id of each
    entry), ``queue_ptr``, ``queue_len``: saved in checkpoints, so resuming is
    exact). Each step first enqueues the teacher embeddings of all ranks
    (variable counts, gathered in rank order; only the newest ``queue_size``
    when more arrive), as the official 2025 code does (enqueue before), and
    then relates the local embeddings to the filled part of the queue. Slots
    never written are left out of the softmax (the official code starts from
    random entries).

    Exclusion (``exclude``): ``'image'`` (default, ours) relates each embedding only
    to entries of *other* images (metainfo ``img_id``, earlier steps included);
    ``'self'`` leaves out only its own entry of this step; ``'none'`` is the
    official code, whose target is then nearly one-hot on the embedding's own
    entry (configs/rrd/README.md).

    Rows with no entry to relate to add nothing; a step where no row has one
    gives 0, still in the graph. ``divergence``: ``'kl'`` (default) logs
    ``KL(p_t || p_s)`` (floor 0); ``'cross_entropy'`` the official
    ``-sum p_t log p_s``; the same gradient. Defaults and the official code
    versions they come from: configs/rrd/README.md.

    Args:
        in_channels (int): Student width (embedding or level channels; derived).
        teacher_channels (int): Teacher width (derived).
        num_levels (int): Levels the loss is called with (level sources; derived).
        mode (str): ``'instance'`` or ``'image'``, for feature levels.
        embed_dim (int): Projection dimension. Defaults to 128.
        queue_size (int): Memory size. Defaults to 16384.
        student_tau (float): Student temperature. Defaults to 0.1.
        teacher_tau (float): Teacher temperature. Defaults to 0.05.
        exclude (str): ``'image'``, ``'self'`` or ``'none'``.
        divergence (str): ``'kl'`` or ``'cross_entropy'``.
        pos_iou_thr (float): IoU making a RoI row positive. Defaults to 0.5.
        num_negatives (int, optional): Negative RoI rows kept per image.
            Defaults to 16.
        strides, finest_scale: level strides and the box scale of level 0
            (``'instance'``; derived from the student).
        roi_output_size (int): RoIAlign output size (``'instance'``).
        loss_weight (float): Weight of the loss. Defaults to 1.0.
    """

    receives = Receives(all_levels=True, data_samples=True, rois=True,
                        derived=('in_channels', 'teacher_channels', 'num_levels', 'strides',
                                 'finest_scale'))

    def __init__(self,
                 in_channels: int = 256,
                 teacher_channels: int = 256,
                 num_levels: int = 5,
                 mode: str = 'instance',
                 embed_dim: int = 128,
                 queue_size: int = 16384,
                 student_tau: float = 0.1,
                 teacher_tau: float = 0.05,
                 exclude: str = 'image',
                 divergence: str = 'kl',
                 pos_iou_thr: float = 0.5,
                 num_negatives: Optional[int] = 16,
                 strides: Optional[Sequence[int]] = None,
                 finest_scale: Optional[float] = None,
                 roi_output_size: int = 7,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
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
        if num_negatives is not None and num_negatives < 0:
            raise ValueError(f'RRDLoss: num_negatives must be None or >= 0, got {num_negatives}')
        check_level_strides('RRDLoss', strides, num_levels)
        self.in_channels = in_channels
        self.teacher_channels = teacher_channels
        self.num_levels = num_levels
        self.mode = mode
        self.student_tau = student_tau
        self.teacher_tau = teacher_tau
        self.exclude = exclude
        self.divergence = divergence
        self.pos_iou_thr = pos_iou_thr
        self.num_negatives = num_negatives
        self.loss_weight = check_non_negative(loss_weight, 'RRDLoss loss_weight')
        self.strides = None if strides is None else tuple(strides)
        self.finest_scale = finest_scale
        self.roi_output_size = roi_output_size

        levels_in_vector = num_levels if mode == 'image' else 1
        self.student_head = nn.Linear(in_channels * levels_in_vector, embed_dim)
        self.teacher_head = nn.Linear(teacher_channels * levels_in_vector, embed_dim)
        self.teacher_head.requires_grad_(False)
        self.register_buffer('queue', torch.zeros(queue_size, embed_dim))
        self.register_buffer('queue_ids', torch.full((queue_size, ), -1, dtype=torch.long))
        self.register_buffer('queue_ptr', torch.zeros((), dtype=torch.long))
        self.register_buffer('queue_len', torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------ inputs
    def _selection(self, x, batch_data_samples, rois) -> Tuple[Optional[Tensor], Tensor]:
        """What the embeddings of a call are: ``(selection, (B, ) batch index of each)``;
        the selection is the kept row indices (RoI rows), the ground-truth RoIs
        (``'instance'`` levels) or None (``'image'`` levels)."""
        if isinstance(x, Tensor):
            keep = self._kept_rows(rois, batch_data_samples)
            return keep, rois[keep, 0].long()
        if self.mode == 'instance':
            box_rois = gt_rois(batch_data_samples, x[0].device)
            return box_rois, box_rois[:, 0].long()
        return None, torch.arange(x[0].size(0), device=x[0].device)

    def _vectors(self, x, selection: Optional[Tensor]) -> Tensor:
        """(B, C) float32 vectors: the selected rows, or the levels pooled per box or image."""
        if isinstance(x, Tensor):
            return x[selection].float()
        if selection is None:
            return torch.cat([f.float().mean(dim=(2, 3)) for f in x], dim=1)
        return pool_instances([f.float() for f in x], selection, self.strides, self.finest_scale,
                              self.roi_output_size)

    def _kept_rows(self, rois: Tensor, batch_data_samples: List[DetDataSample]) -> Tensor:
        """Indices of the positive RoIs and of the first ``num_negatives`` per image."""
        if self.num_negatives is None:
            return torch.arange(rois.size(0), device=rois.device)
        negative = roi_labels(rois, batch_data_samples, self.pos_iou_thr) < 0
        keep = ~negative
        for i in range(len(batch_data_samples)):
            rows = torch.nonzero(negative & (rois[:, 0] == i)).squeeze(1)
            keep[rows[:self.num_negatives]] = True
        return torch.nonzero(keep).squeeze(1)

    def _check(self, x, channels: int, side: str, batch_data_samples, rois) -> None:
        if isinstance(x, Tensor):
            self._check_rows(x, channels, side, batch_data_samples, rois)
        else:
            self._check_levels(x, channels, side)
            self._check_samples(batch_data_samples, x[0].size(0))

    def _check_rows(self, rows: Tensor, channels: int, side: str, batch_data_samples,
                    rois) -> None:
        if self.mode == 'image':
            raise ValueError("RRDLoss: mode='image' pools feature levels; RoI rows "
                             "(source 'roi_embed') have no levels: leave mode out")
        if rows.dim() != 2 or rows.size(1) != channels:
            raise ValueError(f'RRDLoss: expected {side} rows (R, {channels}), got '
                             f'{tuple(rows.shape)}')
        if rois is None or rois.shape != (rows.size(0), 5) or batch_data_samples is None:
            raise ValueError('RRDLoss on rows needs rois=(R, 5), one per row, and the batch '
                             'data samples (the distiller passes both for RoI sources), got '
                             f'rois {None if rois is None else tuple(rois.shape)} for '
                             f'{rows.size(0)} rows')
        self._check_samples(batch_data_samples, len(batch_data_samples))

    def _check_levels(self, feats: List[Tensor], channels: int, side: str) -> None:
        if len(feats) != self.num_levels:
            raise ValueError(f'RRDLoss was built for {self.num_levels} levels, got '
                             f'{len(feats)} {side} levels')
        for lvl, f in enumerate(feats):
            if f.dim() != 4 or f.size(1) != channels:
                raise ValueError(f'RRDLoss level {lvl}: expected {side} (N, {channels}, H, W), '
                                 f'got {tuple(f.shape)}')
        if self.mode == 'instance' and None in (self.strides, self.finest_scale):
            raise ValueError("RRDLoss(mode='instance') on feature levels needs strides and "
                             "finest_scale: the distiller sets them from the student's RoI "
                             'extractor; give them explicitly when calling the loss standalone')

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

    # ------------------------------------------------------------ teacher side
    @torch.no_grad()
    def _teacher_side(self, teacher: Tensor, ids: Tensor
                      ) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
        """Embed the (B, C_t) teacher vectors, enqueue those of all ranks, and return the
        (B, D) embeddings, the (K, D) memory, the (B, K) mask of the entries each embedding
        relates to (None: all) and the (B, ) slot of each embedding's own entry."""
        teacher_emb = F.normalize(self.teacher_head(teacher), dim=1)
        keys, offset = gather_variable_rows(teacher_emb)
        key_ids, _ = gather_variable_rows(ids)
        own_slots = enqueue(self.queue, self.queue_ids, self.queue_ptr, self.queue_len, keys,
                            key_ids)[offset:offset + teacher_emb.size(0)]
        size = int(self.queue_len)
        valid = related_entries(self.queue_ids[:size], ids, own_slots, self.exclude)
        return teacher_emb, self.queue[:size], valid, own_slots

    @torch.no_grad()
    def measure_teacher_target(self, teacher, batch_data_samples=None, rois=None
                               ) -> Dict[str, object]:
        """Run the teacher side of one step (embeddings, memory update) on ``teacher``
        (levels, or (R, D_t) rows with ``rois``); the student is not needed.

        Returns :func:`teacher_target_statistics` of the target plus ``'target'``
        (B, K) (the target's weights; 0 for rows that relate to nothing),
        ``'own_slots'`` (B, ) (where each embedding was written) and
        ``'selection'`` (the kept row indices or ground-truth RoIs, as in training).
        """
        self._check(teacher, self.teacher_channels, 'teacher', batch_data_samples, rois)
        selection, index = self._selection(teacher, batch_data_samples, rois)
        ids = image_ids(batch_data_samples, index)
        emb, memory, valid, own_slots = self._teacher_side(self._vectors(teacher, selection), ids)
        stats = teacher_target_statistics(emb, memory, self.teacher_tau, valid, own_slots)
        logits = emb @ memory.t() / self.teacher_tau
        if valid is not None:
            logits = logits.masked_fill(~valid, float('-inf'))
        stats.update(target=torch.nan_to_num(logits.softmax(dim=1)), own_slots=own_slots,
                     selection=selection)
        return stats

    def forward(self, student, teacher, batch_data_samples: Optional[List[DetDataSample]] = None,
                rois: Optional[Tensor] = None) -> Tensor:
        """Weighted RRD loss.

        Args:
            student: (R, D_s) RoI embedding rows, or student levels, each
                (N, C_s, H_l, W_l).
            teacher: (R, D_t) rows, or teacher levels (N, C_t, H_l, W_l).
            batch_data_samples (List[DetDataSample], optional): Samples with
                ``gt_instances`` (boxes in input pixels, labels) and metainfo
                ``img_id`` (``exclude='image'``).
            rois (Tensor, optional): (R, 5) RoIs of the rows (RoI rows only).

        Returns:
            Tensor: Scalar float32 loss multiplied by ``loss_weight``.
        """
        self._check(student, self.in_channels, 'student', batch_data_samples, rois)
        self._check(teacher, self.teacher_channels, 'teacher', batch_data_samples, rois)
        first = student if isinstance(student, Tensor) else student[0]
        with float32_no_autocast(first):
            selection, index = self._selection(student, batch_data_samples, rois)
            ids = image_ids(batch_data_samples, index)
            student_emb = F.normalize(self.student_head(self._vectors(student, selection)),
                                      dim=1)
            t_vec = self._vectors(teacher.detach() if isinstance(teacher, Tensor)
                                  else [t.detach() for t in teacher], selection)
            teacher_emb, memory, valid, _ = self._teacher_side(t_vec, ids)
            loss = relational_distribution_loss(student_emb, teacher_emb, memory,
                                                self.student_tau, self.teacher_tau, valid,
                                                self.divergence)
        return loss * self.loss_weight
