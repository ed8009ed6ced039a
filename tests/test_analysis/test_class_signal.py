"""Class signal of embeddings (k-NN accuracy) and RRD target purity, against brute force."""
import pytest
import torch

from kd_det.analysis.class_signal import knn_accuracy, target_purity


def _brute_knn(x, labels, groups, k):
    hits = 0
    for i in range(len(x)):
        others = [j for j in range(len(x)) if groups[j] != groups[i]]
        sims = sorted(others, key=lambda j: -float(torch.cosine_similarity(x[i], x[j], dim=0)))
        votes = [int(labels[j]) for j in sims[:k]]
        best = max(set(votes), key=lambda c: (votes.count(c), c == votes[0]))
        hits += best == int(labels[i])
    return hits / len(x)


@pytest.mark.parametrize('k', [1, 3, 5])
def test_knn_accuracy_matches_brute_force(k):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=g)
    labels = torch.randint(0, 3, (40, ), generator=g)
    x = centres[labels] + 0.9 * torch.randn(40, 6, generator=g)
    groups = torch.arange(40) // 4
    assert knn_accuracy(x, labels, groups, k) == pytest.approx(_brute_knn(x, labels, groups, k))


def test_knn_leaves_the_own_group_out():
    x = torch.tensor([[1., 0.], [1., 0.01], [0., 1.], [0.01, 1.]])
    labels = torch.tensor([0, 1, 0, 1])
    assert knn_accuracy(x, labels, torch.arange(4), 1) == 0  # nearest: the other class
    assert knn_accuracy(x, labels, torch.tensor([0, 0, 1, 1]), 1) == 0.5


def test_target_purity():
    target = torch.tensor([[0.5, 0.25, 0.25], [0., 0., 0.], [0.1, 0.9, 0.]])
    purity = target_purity(target, torch.tensor([2, 0, 1]), torch.tensor([2, 1, 2]))
    assert purity == pytest.approx((0.75 + 0.9) / 2)  # the empty row is left out
