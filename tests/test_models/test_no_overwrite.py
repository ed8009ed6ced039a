"""A configured value is used or refused, never silently replaced."""
import argparse
import copy

import pytest
from mmengine.config import Config

from testing_utils import DEMO_PAIR
from kd_det.models.teacher import student_preprocessor
from kd_det.train import build_config


def test_a_distiller_preprocessor_that_differs_from_the_students_is_refused():
    student = copy.deepcopy(Config.fromfile(DEMO_PAIR).model.student)
    own = student.data_preprocessor
    assert student_preprocessor(None, student) == own
    assert student_preprocessor(copy.deepcopy(own), student) == own
    other = dict(own, mean=[0., 0., 0.])
    with pytest.raises(ValueError, match=r"differs from the student's .*mean"):
        student_preprocessor(other, student)
    del student['data_preprocessor']
    assert student_preprocessor(other, student) == other


def test_amp_keeps_a_configured_loss_scale(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text(f"_base_ = {DEMO_PAIR!r}\noptim_wrapper = dict(loss_scale=512.)\n")
    args = argparse.Namespace(config=str(path), launcher='none', cfg_options=None,
                              work_dir=str(tmp_path), amp=True, auto_scale_lr=False,
                              resume=None)
    cfg = build_config(args)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 512.
    path.write_text(f"_base_ = {DEMO_PAIR!r}\n")
    assert build_config(args).optim_wrapper.loss_scale == 'dynamic'
