# Demo: UniKD's distribution half, the COCO recipe (configs/unikd/): from the embeddings
# the two box heads classify (source='roi_embed'), each side predicts a diagonal Gaussian
# over the 8 class logits (7 classes + background) of the student's sampled RoIs; the
# teacher's predictor is fitted to the teacher's logits (support loss, Gaussian NLL), the
# student's pulled to it by the closed-form KL. Channels and classes come from the models.
# ./unikd-whole_* adds the logit half. Weight: docs/demo/tune_sweep.md.
_base_ = '../_base_/faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', source='roi_embed', loss_weight=1.0,
                        support_weight=1.0)))
