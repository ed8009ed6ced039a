# CrossKD (Wang et al., CVPR 2024), its published GFL pair: GFL R-101 ms-2x -> R-50 1x
# (published: 40.2 -> 43.7 AP). The student head's features after its 3rd of 4 stacked
# convs cross into the teacher's head (reused_teacher_head_idx=3); on the crossed
# predictions against the teacher's own: KD quality focal loss (beta 1, weight 1) on the
# class logits at every prior with a label weight, / the student's positives, and the KL
# of the box-distribution bins per side (T 1, summed over the 17 bins, weight 4), weighted by
# the teacher's top class score and / its sum: jbwang1997/CrossKD@87e156a's
# configs/crosskd/crosskd_r50_gflv1_r101-2x-ms_fpn_1x_coco.py.
_base_ = '../_base_/gfl_r101-ms-2x-to-r50_fpn_1x_coco.py'
model = dict(
    reused_teacher_head_idx=3,
    distill_losses=dict(
        loss_cls_kd=dict(type='CrossKDClsLoss', source='cross_cls', beta=1.0, loss_weight=1.0),
        loss_reg_kd=dict(type='CrossKDBinsLoss', source='cross_reg', T=1.0,
                         bin_reduction='sum', loss_weight=4.0)))
