# SSIM on the 5 FPN levels (lambda 2, ../ssim/) and logit KD on the RoI head's class logits
# (T 1, weight 1, ../logit_kd/) together; logged separately (loss_ssim, loss_kd).
_base_ = ['../ssim/ssim_faster-rcnn_r101-to-r50_fpn_2x_coco.py']
model = dict(
    distill_losses=dict(
        loss_kd=dict(type='LogitKDLoss', source='roi_cls', temperature=1.0, loss_weight=1.0)))
