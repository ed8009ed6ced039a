"""CrossKD's and LD's loss arithmetic, transcribed as independent references for the tests.

Written from the description of jbwang1997/CrossKD@87e156a46259e3a516b65fc6a049b200b9ab0d54
``mmdet/models/losses/kd_loss.py`` (``kd_quality_focal_loss``,
``knowledge_distillation_kl_div_loss`` with ``class_reduction``), mmdet 3.3.0's
``mmdet/models/losses/kd_loss.py`` (the same KL, averaged over the bins) and
``mmdet/models/losses/iou_loss.py`` / ``structures/bbox/bbox_overlaps.py`` (GIoU, IoU), each
reduced as mmdet's ``weight_reduce_loss``: ``sum(loss * weight) / (avg_factor + eps)``; the
crossing, the ATSS centerness term and the FCOS terms of
jbwang1997/CrossKD@ae7fba9bb029532dfbf1d15e140dd74a99c1829e ``mmdet/models/detectors/
crosskd_{atss,fcos}.py`` (below).
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


# --- the crossing, as the official detectors run it (crosskd_*.py: forward_crosskd_single /
# forward_hkd_single, reuse_teacher_head, align_scale), the head's layers called one by one.
# ``predict(head, cls_feat, reg_feat)`` is the head's predictors on its last features.

def ref_head_forward(head, x, k, predict):
    """(predictions, (cls held, reg held)): each stacked conv run as ``conv(.., activate=False)``
    then ``conv.activate`` (mmcv's in-place ReLU, so the held k-th output is the activated one)."""
    held, feats = [], []
    for convs in (head.cls_convs, head.reg_convs):
        feat = x
        for i, conv in enumerate(convs):
            feat = conv(feat, activate=False)
            if i + 1 == k:
                held.append(feat)
            feat = conv.activate(feat)
        feats.append(feat)
    return predict(head, *feats), tuple(held)


def ref_align_scale(s, t):
    """Student (N, C, H, W) standardised per channel (unbiased std + 1e-6), given the
    teacher's per-channel mean and std."""
    n, c, h, w = s.shape
    s, t = s.permute(1, 0, 2, 3).reshape(c, -1), t.permute(1, 0, 2, 3).reshape(c, -1)
    s = (s - s.mean(-1, keepdim=True)) / (s.std(-1, keepdim=True) + 1e-6)
    s = s * t.std(-1, keepdim=True) + t.mean(-1, keepdim=True)
    return s.reshape(c, n, h, w).permute(1, 0, 2, 3)


def ref_reuse(head, k, student_held, teacher_held, predict):
    """The teacher ``head``'s predictions on the student's held features, aligned and ReLU'd."""
    cls, reg = (F.relu(ref_align_scale(s, t)) for s, t in zip(student_held, teacher_held))
    for i in range(k, len(head.cls_convs)):
        cls, reg = head.cls_convs[i](cls), head.reg_convs[i](reg)
    return predict(head, cls, reg)


def ref_atss_predict(scale):
    """ATSS: class logits, scaled deltas and centerness logits (from the reg features)."""
    return lambda head, cls, reg: (head.atss_cls(cls), scale(head.atss_reg(reg)).float(),
                                   head.atss_centerness(reg))


def ref_fcos_predict(scale, stride):
    """FCOS (crosskd_fcos.py at ae7fba9bb029532dfbf1d15e140dd74a99c1829e): class logits;
    distances: the scaled output clamped at 0 and, when the head is not training, times the
    stride if ``norm_on_bbox``, else its exp; centerness logits from the reg or cls features
    (``centerness_on_reg``)."""
    def predict(head, cls, reg):
        dist = scale(head.conv_reg(reg)).float()
        if head.norm_on_bbox:
            dist = dist.clamp(min=0)
            if not head.training:
                dist = dist * stride
        else:
            dist = dist.exp()
        center = head.conv_centerness(reg if head.centerness_on_reg else cls)
        return head.conv_cls(cls), dist, center
    return predict


# --- CrossKD's ATSS centerness and FCOS terms (jbwang1997/CrossKD at
# ae7fba9bb029532dfbf1d15e140dd74a99c1829e: mmdet/models/detectors/crosskd_atss.py
# ``pred_imitation_loss_single`` and crosskd_fcos.py ``loss_by_feat``; its ATSS config
# configs/crosskd/crosskd_r50_atss_r101_fpn_1x_coco.py: loss_center_kd = sigmoid
# CrossEntropyLoss, weight 1).

def ref_center_kd(crossed, teacher, labels, num_classes, avg_factor):
    """One level: at the positives (0 <= label < num_classes), BCE of the crossed centerness
    logits against sigmoid(teacher logits), summed, / avg_factor; 0 without positives."""
    pos = (labels >= 0) & (labels < num_classes)
    if not pos.any():
        return crossed.new_zeros(())
    x, p = crossed[pos], torch.sigmoid(teacher[pos])
    bce = -(p * F.logsigmoid(x) + (1 - p) * F.logsigmoid(-x))
    return bce.sum() / (avg_factor + EPS)


def ref_centerness_denorm(pos_targets):
    """FCOS's avg factor: the sum over positives of sqrt(min(l, r) / max(l, r) *
    min(t, b) / max(t, b)) of their (l, t, r, b) targets, at least 1e-6 (one process)."""
    lr, tb = pos_targets[:, [0, 2]], pos_targets[:, [1, 3]]
    ratio = lr.min(1)[0] / lr.max(1)[0] * tb.min(1)[0] / tb.max(1)[0]
    return max(float(ratio.sqrt().sum()), 1e-6)


def ref_distance_boxes(points, dist):
    """(x - l, y - t, x + r, y + b) of (R, 2) points and (R, 4) distances."""
    return torch.stack([points[:, 0] - dist[:, 0], points[:, 1] - dist[:, 1],
                        points[:, 0] + dist[:, 2], points[:, 1] + dist[:, 3]], 1)


def ref_iou_log(a, b, eps=1e-6):
    """mmdet's IoULoss (mode 'log'): -log(max(IoU, eps)) of aligned (R, 4) boxes."""
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = (area(a) + area(b) - inter).clamp(min=eps)
    return -(inter / union).clamp(min=eps).log()
