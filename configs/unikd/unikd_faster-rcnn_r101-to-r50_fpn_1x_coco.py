# UniKD (Huang et al., ECCV 2024, arXiv 2409.18565), distribution half: from the 1024-d
# embeddings the two box heads classify (source='roi_embed'), each side predicts a
# diagonal Gaussian over the 81 class logits (80 classes + background) of the student's
# sampled RoIs; the teacher's predictor is fitted to the teacher's logits only (support
# loss: Gaussian NLL), the student's pulled to the teacher's Gaussian by the closed-form
# KL per dimension. Channels and classes come from the models. ./unikd-whole_* adds the
# logit half, as the paper does. Weight: set by gradient share at init on a COCO-sized
# batch (configs/unikd/README.md).
_base_ = '../_base_/faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', source='roi_embed', loss_weight=9.0,
                        support_weight=1.0)))
