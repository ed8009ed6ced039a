"""Channel-wise distillation loss, CWD (Shu et al., ICCV 2021)."""
import torch
import torch.nn as nn
from torch import Tensor

from mmdet.registry import MODELS

from .receives import Receives
from .utils import check_non_negative, feature_pair_loss


class _RowKL(torch.autograd.Function):
    """Sum over rows of KL(softmax(t / tau) || softmax(s / tau)), (R, M) logits.

    The gradient is written out, ``(softmax(s / tau) - softmax(t / tau)) / tau`` per
    row, so backward is three in-place passes over one saved tensor instead of
    autograd's chain through the product, the difference and the log-softmax.
    The teacher gets no gradient.
    """

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, tau: float) -> Tensor:
        log_p_s = (student / tau).log_softmax(-1)
        log_p_t = (teacher / tau).log_softmax(-1)
        p_t = log_p_t.exp()
        ctx.tau = tau
        ctx.save_for_backward(log_p_s, p_t)
        return torch.dot(p_t.flatten(), (log_p_t - log_p_s).flatten())

    @staticmethod
    def backward(ctx, grad: Tensor):
        log_p_s, p_t = ctx.saved_tensors
        return log_p_s.exp().sub_(p_t).mul_(grad / ctx.tau), None, None


def cwd_loss(student: Tensor, teacher: Tensor, tau: float = 1.0) -> Tensor:
    """tau^2 / (N C) * sum over (N, C) of KL(p_teacher || p_student).

    p is the softmax over the H * W positions of each channel of (N, C, H, W) / tau.
    """
    n, c = student.shape[:2]
    kl = _RowKL.apply(student.flatten(2), teacher.detach().flatten(2), tau)
    return kl * tau**2 / (n * c)


@MODELS.register_module()
class CWDLoss(nn.Module):
    """CWD: loss_weight * tau^2-scaled channel-wise KL(teacher || student), as MMRazor's
    ``ChannelWiseDivergence`` (its COCO configs: tau 1, loss_weight 10 on 5 levels).

    Computed in float32 even under autocast; the teacher is treated as a constant.
    """

    receives = Receives()  # forward(student, teacher) per level, (N, C, H, W) each

    def __init__(self, loss_weight: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = check_non_negative(loss_weight, 'loss_weight')
        if tau <= 0:
            raise ValueError(f'tau must be positive, got {tau!r}')
        self.tau = float(tau)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        """student, teacher: (N, C, H, W) features. Returns the weighted scalar loss."""
        return feature_pair_loss('CWDLoss', cwd_loss, student, teacher, self.loss_weight, self.tau)
