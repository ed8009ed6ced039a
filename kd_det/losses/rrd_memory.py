"""FIFO memory of teacher embeddings for :class:`~kd_det.losses.rrd.RRDLoss`.

The memory lives in four buffers of the loss, so that checkpoints keep their
keys: ``queue`` (K, D) embeddings, ``queue_ids`` (K, ) image id of each entry
(-1 where unknown or never written), ``queue_ptr`` (next slot to write) and
``queue_len`` (filled slots), both long scalars. The functions here gather the
embeddings of all ranks, write them into these buffers and say which entries
each embedding relates to.
"""
from typing import Optional, Tuple

import torch
from mmengine.dist import all_gather, get_rank, get_world_size
from torch import Tensor

EXCLUDE = ('none', 'self', 'image')


def gather_variable_rows(x: Tensor) -> Tuple[Tensor, int]:
    """Concatenate, in rank order, the (n_r, ...) tensors of all ranks (n_r may differ).

    Returns the concatenation and the row where this rank's rows start in it.
    Identity (and 0) when not distributed. Every rank must call it, also with n_r = 0.
    """
    if get_world_size() == 1:
        return x, 0
    sizes = all_gather(torch.tensor([x.size(0)], device=x.device))
    sizes = [int(s.item()) for s in sizes]
    padded = x.new_zeros((max(sizes), ) + tuple(x.shape[1:]))
    padded[:x.size(0)] = x
    gathered = all_gather(padded)
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)]), sum(sizes[:get_rank()])


@torch.no_grad()
def enqueue(queue: Tensor, queue_ids: Tensor, queue_ptr: Tensor, queue_len: Tensor,
            keys: Tensor, ids: Tensor) -> Tensor:
    """Write (n, D) ``keys`` and their (n, ) image ``ids`` at ``queue_ptr`` (wrapping
    around; oldest out first), updating the four buffers in place. Returns the (n, )
    slot of each key, -1 for the keys that did not fit (only the newest K are written)."""
    size = queue.size(0)
    n = keys.size(0)
    kept = min(n, size)
    ptr = int(queue_ptr)
    slots = torch.full((n, ), -1, dtype=torch.long, device=keys.device)
    if kept == 0:
        return slots
    slots[n - kept:] = (ptr + torch.arange(kept, device=keys.device)) % size
    queue[slots[n - kept:]] = keys[n - kept:].to(queue.dtype)
    queue_ids[slots[n - kept:]] = ids[n - kept:]
    queue_ptr.fill_((ptr + kept) % size)
    queue_len.fill_(min(int(queue_len) + kept, size))
    return slots


def related_entries(memory_ids: Tensor, image_ids: Tensor, own_slots: Tensor,
                    exclude: str) -> Optional[Tensor]:
    """(B, K) bool mask of the K filled entries each of B embeddings relates to.

    Args:
        memory_ids (Tensor): (K, ) image id of each filled entry.
        image_ids (Tensor): (B, ) image id of each embedding.
        own_slots (Tensor): (B, ) slot of each embedding's own entry, -1 where
            it did not fit.
        exclude (str): One of :data:`EXCLUDE`: ``'image'`` leaves out the
            entries of the embedding's image, ``'self'`` its own entry,
            ``'none'`` nothing (returns None: all entries).
    """
    if exclude == 'none':
        return None
    if exclude == 'image':
        return memory_ids[None, :] != image_ids[:, None]
    valid = torch.ones(own_slots.size(0), memory_ids.size(0), dtype=torch.bool,
                       device=memory_ids.device)
    rows = torch.nonzero(own_slots >= 0).squeeze(1)
    valid[rows, own_slots[rows]] = False
    return valid
