# UniKD (Huang et al., ECCV 2024, arXiv 2409.18565), distribution half, with the paper's
# adaptive features fusion at RoI level (source='roi_levels'): every sampled RoI of the
# student is pooled on P2-P5 of each network's FPN by that network's RoI extractor
# (RoIAlign 7x7), each level brought to 256 channels by a 1x1 conv, the levels fused
# top-down by sigmoid gates (two weights per stage), averaged over the 7x7 positions; from
# that vector each side predicts a diagonal Gaussian over the 81 class logits. The
# teacher side (fusion + predictor) is fitted to the teacher's logits only (support loss),
# the student's pulled to it by the closed-form KL. Channels, levels and classes come from
# the models. ./unikd-fusion-whole_* adds the logit half. Weight: the demo's, chosen on its
# tune split (8), carried to COCO by gradient share at init (configs/unikd/README.md).
_base_ = './unikd_faster-rcnn_r101-to-r50_fpn_1x_coco.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', source='roi_levels', loss_weight=9.0,
                        support_weight=1.0)))
