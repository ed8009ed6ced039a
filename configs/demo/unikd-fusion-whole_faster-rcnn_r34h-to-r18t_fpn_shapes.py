# Demo: UniKD whole with the paper's adaptive features fusion at RoI level: as
# ./unikd-whole_faster-rcnn_r34h-to-r18t_fpn_shapes.py (distributions over the class logits
# of the student's sampled RoIs + logit KD, T 1, weight 4), but each side predicts its
# Gaussian from its FPN levels instead of its box head's embedding
# (source='roi_levels'): every RoI is pooled on P2-P5 with the RoI extractor's own
# RoIAlign, each level brought to common channels by a 1x1 conv, the levels fused top-down
# by sigmoid gates (two weights per stage), the result averaged over the 7x7 positions.
# Channels, levels and classes come from the models. Weight 8, chosen on the tune split
# over 4 (15.9 vs 14.6 AP, baseline 13.4): docs/demo/tune_sweep.md.
_base_ = './unikd-whole_faster-rcnn_r34h-to-r18t_fpn_shapes.py'
model = dict(
    distill_losses=dict(
        loss_unikd=dict(type='UniKDLoss', source='roi_levels', loss_weight=8.0,
                        support_weight=1.0)))
