"""How much class an embedding carries, and how much of RRD's target lands on the same class.

Used by tools/analysis/rrd_target_entropy.py to check a teacher and a dataset before
training RRD: a relational target only teaches classes if the teacher embedding it
relates puts boxes of one class near each other.
"""
import torch
from torch import Tensor


def knn_accuracy(embeddings: Tensor, labels: Tensor, groups: Tensor, k: int = 1) -> float:
    """Leave-one-group-out k-nearest-neighbour class accuracy under cosine similarity.

    Args:
        embeddings (Tensor): (N, D) vectors.
        labels (Tensor): (N, ) class of each.
        groups (Tensor): (N, ) group (image) of each; neighbours come from other groups.
        k (int): Neighbours voting (majority; ties to the nearest neighbour's class).

    Returns:
        float: Fraction of the rows with a neighbour whose vote is their class.
    """
    x = torch.nn.functional.normalize(embeddings.double(), dim=1)
    sim = (x @ x.t()).masked_fill(groups[:, None] == groups[None, :], float('-inf'))
    k = min(k, int((sim > float('-inf')).sum(1).min()))
    if k < 1:
        raise ValueError('knn_accuracy: some row has no neighbour in another group')
    nearest = sim.topk(k, dim=1).indices  # (N, k), most similar first
    votes = labels[nearest]
    counts = torch.nn.functional.one_hot(votes, int(labels.max()) + 1).sum(1).double()
    counts[torch.arange(len(labels)), votes[:, 0]] += 0.5  # ties: the nearest neighbour
    return (counts.argmax(1) == labels).double().mean().item()


def target_purity(target: Tensor, row_labels: Tensor, memory_labels: Tensor) -> float:
    """Mean weight that (B, K) targets put on the entries of each row's class.

    Args:
        target (Tensor): (B, K) weights over the K memory entries (rows sum to 1, or
            to 0 for a row that relates to nothing: left out).
        row_labels (Tensor): (B, ) class of each row.
        memory_labels (Tensor): (K, ) class of each memory entry.
    """
    rows = target.sum(1) > 0
    same = (row_labels[rows, None] == memory_labels[None, :]).to(target.dtype)
    return (target[rows] * same).sum(1).mean().item() if bool(rows.any()) else float('nan')
