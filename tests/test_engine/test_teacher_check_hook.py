"""TeacherCheckHook: a trained teacher passes, an untrained one is flagged."""
import copy
import logging
import os.path as osp
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample

from testing_utils import DEMO_PAIR, DEMO_TEACHER, REPO
from kd_det.demo.synthetic_coco import render_image
from kd_det.engine import TeacherCheckHook

SHIPPED = osp.join(REPO, 'checkpoints', 'demo_teacher_r34-half_shapes.pth')


def runner_for(teacher_ckpt):
    cfg = copy.deepcopy(Config.fromfile(DEMO_PAIR).model)
    cfg.teacher_ckpt = teacher_ckpt
    cfg.distill_losses = dict(loss_mse=dict(type='FeatureMSELoss'))
    model = MODELS.build(cfg)
    batches = []
    for seed in range(2):
        image, _ = render_image(np.random.default_rng(seed), (192, 192), (4, 6), (16.0, 80.0))
        sample = DetDataSample(metainfo=dict(img_shape=(192, 192), ori_shape=(192, 192),
                                             scale_factor=(1.0, 1.0)))
        # mmcv loads BGR; the preprocessor flips to RGB
        inputs = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        batches.append(dict(inputs=[inputs], data_samples=[sample]))
    return SimpleNamespace(model=model, val_loop=object(), val_dataloader=batches,
                           train_dataloader=batches)


def test_untrained_teacher_is_flagged(tmp_path):
    teacher = MODELS.build(Config.fromfile(DEMO_TEACHER).model)
    teacher.init_weights()
    path = str(tmp_path / 'random_teacher.pth')
    torch.save({'state_dict': teacher.state_dict()}, path)
    runner = runner_for(path)
    with pytest.raises(RuntimeError, match=r'0 detections .*UNTRAINED.*random_teacher\.pth'):
        TeacherCheckHook(strict=True).before_train(runner)
    with mock.patch('kd_det.engine.teacher_check_hook.print_log') as log:
        TeacherCheckHook().before_train(runner)
    (message,), kwargs = log.call_args
    assert 'UNTRAINED' in message and kwargs['level'] == logging.WARNING


@pytest.mark.skipif(not osp.isfile(SHIPPED), reason='shipped demo teacher missing')
def test_trained_teacher_passes_quietly():
    runner = runner_for(SHIPPED)
    hook = TeacherCheckHook(num_batches=2, strict=True)
    images, kept, top = hook.check(runner.model, runner.val_dataloader)
    assert images == 2 and kept > 0 and top > 0.5
    hook.before_train(runner)  # strict: would raise if it found nothing
