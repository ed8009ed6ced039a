"""CrossKD's and LD's loss arithmetic, transcribed as independent references for the tests.

Written from the description of jbwang1997/CrossKD@87e156a46259e3a516b65fc6a049b200b9ab0d54
``mmdet/models/losses/kd_loss.py`` (``kd_quality_focal_loss``,
``knowledge_distillation_kl_div_loss`` with ``class_reduction``), mmdet 3.3.0's
``mmdet/models/losses/kd_loss.py`` (the same KL, averaged over the bins) and
``mmdet/models/losses/iou_loss.py`` / ``structures/bbox/bbox_overlaps.py`` (GIoU), each
reduced as mmdet's ``weight_reduce_loss``: ``sum(loss * weight) / (avg_factor + eps)``.
"""
import torch
import torch.nn.functional as F

EPS = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss: sum / (avg_factor + eps)


def ref_kd_qfl(pred, target, weight, avg_factor, beta=1.0):
    p = torch.sigmoid(target)
    bce = -(p * F.logsigmoid(pred) + (1 - p) * F.logsigmoid(-pred))
    loss = bce * (torch.sigmoid(pred) - p).abs() ** beta * weight[:, None]
    return loss.sum() / (avg_factor + EPS)


def ref_kl(pred, soft, T, reduce):
    """Per row: KL(softmax(soft / T) || softmax(pred / T)) reduced over bins, * T^2."""
    q = torch.softmax(soft / T, 1)
    kl = q * (torch.log(q) - torch.log_softmax(pred / T, 1))
    return (kl.sum(1) if reduce == 'sum' else kl.mean(1)) * T * T


def ref_giou(a, b, eps=1e-6):
    """1 - GIoU of aligned (R, 4) boxes, as mmdet's bbox_overlaps(mode='giou')."""
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = (area(a) + area(b) - inter).clamp(min=eps)
    elt, erb = torch.min(a[:, :2], b[:, :2]), torch.max(a[:, 2:], b[:, 2:])
    enclose = (erb - elt).clamp(min=0).prod(1).clamp(min=eps)
    return 1 - (inter / union - (enclose - union) / enclose)
