"""The official Klayand/PCKA loss, transcribed as an independent reference for the tests."""
import math

import torch
import torch.nn.functional as F


def official_cka(x, y, with_l2_norm=False):
    """Klayand/PCKA ``CenterKernelAlignment``: uncentred CKA of the row Gram matrices."""
    gram_x, gram_y = x @ x.t(), y @ y.t()
    if with_l2_norm:
        gram_x = gram_x / torch.sqrt(torch.diag(gram_x)[:, None])
        gram_y = gram_y / torch.sqrt(torch.diag(gram_y)[:, None])
    return torch.trace(gram_x @ gram_y.t()) / torch.sqrt(
        torch.trace(gram_x @ gram_x.t()) * torch.trace(gram_y @ gram_y.t()))


def official_patches(x, patch_size=16):
    """Official ``patches``: (N, C, H, W) -> (C, P, N * 16 * 16) after bilinear resizing."""
    x = x.permute(1, 0, 2, 3)
    c, n, h, w = x.shape
    hp, wp = math.ceil(h / patch_size) * patch_size, math.ceil(w / patch_size) * patch_size
    x = F.interpolate(x, [hp, wp], mode='bilinear')
    u, v = hp // patch_size, wp // patch_size
    x = x.reshape(c, n, u, patch_size, v, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(c, u * v, n * patch_size * patch_size)


def official_pcka_loss(student, teacher, intra_weight=10.0, inter_weight=None,
                       with_l2_norm=False):
    """Official ``CenterKernelAlignmentRKD.forward``: channel loop, big inter Gram matrices,
    the inter term weighted by ``intra_weight``."""
    t_patches, s_patches = official_patches(teacher), official_patches(student)
    channels = student.shape[1]
    loss = 0
    for i in range(channels):
        loss = loss + intra_weight * -official_cka(t_patches[i], s_patches[i], with_l2_norm)
        if inter_weight:
            loss = loss + intra_weight * -official_cka(t_patches[i].t(), s_patches[i].t(),
                                                       with_l2_norm)
    return loss / channels

