"""Distillation losses; importing this module registers them in mmdet's MODELS registry."""
from .box_kd import BoxDeltaKDLoss, box_delta_kd_loss  # noqa: F401
from .crosskd import (CrossKDBinsLoss, CrossKDBoxLoss, CrossKDCenternessLoss,  # noqa: F401
                      CrossKDClsLoss, kd_quality_focal_loss)
from .cwd import CWDLoss, cwd_loss  # noqa: F401
from .feature_mse import FeatureMSELoss, feature_mse_loss  # noqa: F401
from .fgd import FGDLoss, box_masks, fgd_attention  # noqa: F401
from .ld import LDLoss  # noqa: F401
from .logit_kd import LogitKDLoss, sigmoid_kd_loss, softmax_kd_loss  # noqa: F401
from .mgd import MGDLoss, mgd_loss  # noqa: F401
from .pkd import PKDLoss, pkd_loss  # noqa: F401
from .rcka import RCKALoss, rcka_loss  # noqa: F401
from .rrd import RRDLoss  # noqa: F401
from .ssim import SSIMLoss, ssim_loss  # noqa: F401
from .receives import DERIVED_OPTIONS, Receives  # noqa: F401
from .unikd import UniKDLoss, gaussian_kl, gaussian_nll  # noqa: F401
