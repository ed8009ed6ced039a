# kd_det's own pair and recipe, no published result for this pair (MMYOLO's recipe and
# pairs: ./cwd_rtmdet_*_300e_coco.py).
# CWD + dense logit KD: RTMDet-l teacher (mmdet model zoo, 51.3 box AP) -> RTMDet-s student
# (44.5 alone). The x -> s recipe (student, schedule, losses, hooks) with the teacher swapped;
# the connector maps the student's 128 channels to the l teacher's 256.
_base_ = './cwd-kd_rtmdet_x-to-s_300e_coco.py'

model = dict(
    teacher_config='mmdet::rtmdet/rtmdet_l_8xb32-300e_coco.py',
    teacher_ckpt='https://download.openmmlab.com/mmdetection/v3.0/rtmdet/rtmdet_l_8xb32-300e_coco/rtmdet_l_8xb32-300e_coco_20220719_112030-5a0be7c4.pth',
    connectors=dict(out_channels=256))
