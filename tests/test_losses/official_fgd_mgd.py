"""The official FGD and MGD losses of one FPN level, transcribed here as independent references
for the tests (written from reading the files, not copied; the same operations in the
same order).

- FGD: yzd-v/FGD ``mmdet/distillation/losses/fgd.py``, ``FeatureLoss.forward`` at
  c03a6cf3b3cb3cbfd5554dbf4766e7135747d22d (``swap=False``) and at the initial commit
  04900add42feb796392807eed7024ec895b32f28 (``swap=True``: the mask is indexed
  ``[x range, y range]``); the two differ only there.
- MGD: yzd-v/MGD ``det/mmdet/distillation/losses/mgd.py``, ``FeatureLoss.get_dis_loss`` at
  2c9da0b28625eb948db57afc02c824452c3910fe.

The GcBlock weights are passed in as plain tensors: ``(conv_mask weight, bias, conv1
weight, bias, layer-norm weight, bias, conv2 weight, bias)``.
"""
import torch
import torch.nn.functional as F


def official_attention(preds, temp):
    n, c, h, w = preds.shape
    value = torch.abs(preds)
    fea_map = value.mean(axis=1, keepdim=True)
    s_att = (h * w * F.softmax((fea_map / temp).view(n, -1), dim=1)).view(n, h, w)
    channel_map = value.mean(axis=2, keepdim=False).mean(axis=2, keepdim=False)
    c_att = c * F.softmax(channel_map / temp, dim=1)
    return s_att, c_att


def official_masks(like, gt_bboxes, img_metas, swap):
    """The loop of ``forward`` filling Mask_fg / Mask_bg, slice by slice."""
    n, h, w = like.shape
    mask_fg = torch.zeros_like(like)
    mask_bg = torch.ones_like(like)
    for i in range(n):
        boxes = torch.ones_like(gt_bboxes[i])
        boxes[:, 0] = gt_bboxes[i][:, 0] / img_metas[i]['img_shape'][1] * w
        boxes[:, 2] = gt_bboxes[i][:, 2] / img_metas[i]['img_shape'][1] * w
        boxes[:, 1] = gt_bboxes[i][:, 1] / img_metas[i]['img_shape'][0] * h
        boxes[:, 3] = gt_bboxes[i][:, 3] / img_metas[i]['img_shape'][0] * h
        wmin, wmax = torch.floor(boxes[:, 0]).int(), torch.ceil(boxes[:, 2]).int()
        hmin, hmax = torch.floor(boxes[:, 1]).int(), torch.ceil(boxes[:, 3]).int()
        area = 1.0 / (hmax.view(1, -1) + 1 - hmin.view(1, -1)) / (wmax.view(1, -1) + 1
                                                                  - wmin.view(1, -1))
        for j in range(len(gt_bboxes[i])):
            if swap:
                rows, cols = slice(wmin[j], wmax[j] + 1), slice(hmin[j], hmax[j] + 1)
            else:
                rows, cols = slice(hmin[j], hmax[j] + 1), slice(wmin[j], wmax[j] + 1)
            mask_fg[i][rows, cols] = torch.maximum(mask_fg[i][rows, cols], area[0][j])
        mask_bg[i] = torch.where(mask_fg[i] > 0, 0, 1)
        if torch.sum(mask_bg[i]):
            mask_bg[i] /= torch.sum(mask_bg[i])
    return mask_fg, mask_bg


def official_gc(x, weights):
    """``spatial_pool`` then ``channel_add_conv`` of one side; returns x + GC(x)."""
    mask_w, mask_b, w1, b1, ln_w, ln_b, w2, b2 = weights
    batch, channel, height, width = x.size()
    input_x = x.view(batch, channel, height * width).unsqueeze(1)
    context_mask = F.conv2d(x, mask_w, mask_b).view(batch, 1, height * width)
    context_mask = F.softmax(context_mask, dim=2).unsqueeze(-1)
    context = torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)
    hidden = F.conv2d(context, w1, b1)
    hidden = F.relu(F.layer_norm(hidden, hidden.shape[1:], ln_w, ln_b))
    return x + F.conv2d(hidden, w2, b2)


def official_fgd_level(preds_s, preds_t, gt_bboxes, img_metas, gc_s, gc_t, temp, alpha,
                       beta, gamma, lam, swap=False):
    """One level's ``FeatureLoss.forward`` (no align: equal channels)."""
    n = preds_s.size(0)
    s_att_t, c_att_t = official_attention(preds_t, temp)
    s_att_s, c_att_s = official_attention(preds_s, temp)
    mask_fg, mask_bg = official_masks(s_att_t, gt_bboxes, img_metas, swap)
    # get_fea_loss: MSE(sum) of sqrt-weighted tensors, / len(Mask) = N
    mse = torch.nn.MSELoss(reduction='sum')
    m_fg, m_bg = mask_fg.unsqueeze(1), mask_bg.unsqueeze(1)
    c_t, s_t = c_att_t.unsqueeze(-1).unsqueeze(-1), s_att_t.unsqueeze(1)
    fea_t = torch.mul(torch.mul(preds_t, torch.sqrt(s_t)), torch.sqrt(c_t))
    fea_s = torch.mul(torch.mul(preds_s, torch.sqrt(s_t)), torch.sqrt(c_t))
    fg_loss = mse(torch.mul(fea_s, torch.sqrt(m_fg)), torch.mul(fea_t, torch.sqrt(m_fg))) / n
    bg_loss = mse(torch.mul(fea_s, torch.sqrt(m_bg)), torch.mul(fea_t, torch.sqrt(m_bg))) / n
    mask_loss = torch.sum(torch.abs(c_att_s - c_att_t)) / n + \
        torch.sum(torch.abs(s_att_s - s_att_t)) / n
    rela_loss = mse(official_gc(preds_s, gc_s), official_gc(preds_t, gc_t)) / n
    return alpha * fg_loss + beta * bg_loss + gamma * mask_loss + lam * rela_loss


def official_mgd_level(preds_s, preds_t, generation_weights, alpha, lambda_mgd):
    """``alpha * get_dis_loss``: the mask drawn with ``torch.rand`` on the CPU."""
    w1, b1, w2, b2 = generation_weights
    n, c, h, w = preds_t.shape
    mat = torch.rand((n, 1, h, w)).to(preds_s.device)
    mat = torch.where(mat > 1 - lambda_mgd, 0, 1).to(preds_s.device)
    masked_fea = torch.mul(preds_s, mat)
    new_fea = F.conv2d(F.relu(F.conv2d(masked_fea, w1, b1, padding=1)), w2, b2, padding=1)
    return torch.nn.MSELoss(reduction='sum')(new_fea, preds_t) / n * alpha
