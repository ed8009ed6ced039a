"""kd_det.preflight: the verdict lines, the model-zoo lookup, AMP and balance checks, and the
tool end to end on a small generated shapes dataset with the shipped demo teacher."""
import copy
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS

from testing_utils import DEMO_PAIR, REPO, save_random_teacher, synthetic_batch
from kd_det.analysis import preflight as checks
from kd_det.analysis.model_zoo import zoo_entry
from kd_det.analysis.verdict import Line, exit_code, format_table, overall, to_json
from kd_det.demo.synthetic_coco import generate_dataset
from kd_det.preflight import main, parse_args

SHIPPED = osp.join(REPO, 'checkpoints', 'demo_teacher_r34-half_shapes.pth')
SSIM = osp.join(REPO, 'configs', 'demo', 'ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py')
ZOO_SSIM = osp.join(REPO, 'configs', 'ssim', 'ssim_faster-rcnn_r101-to-r50_fpn_1x_coco.py')
needs_shipped = pytest.mark.skipif(not osp.isfile(SHIPPED), reason='shipped teacher missing')


# ---------------------------------------------------------------- verdict
def test_verdict_is_the_worst_line_and_fail_alone_exits_non_zero():
    ok, warn = Line('a', 'OK', 'fine'), Line('b', 'WARN', 'meh', 'do x')
    fail = Line('c', 'FAIL', 'broken | badly', 'do y')
    assert overall([]) == 'OK' and exit_code([ok]) == 0
    assert overall([ok, warn]) == 'WARN' and exit_code([ok, warn]) == 0
    assert overall([warn, fail, ok]) == 'FAIL' and exit_code([warn, fail]) == 1
    table = format_table([ok, warn, fail])
    assert '| c | FAIL | broken \\| badly | do y |' in table
    assert table.endswith('verdict: FAIL (1 OK, 1 WARN, 1 FAIL); exit code 1')
    parsed = json.loads(to_json([ok, fail], config='x.py'))
    assert parsed['config'] == 'x.py' and parsed['verdict'] == 'FAIL'
    assert parsed['exit_code'] == 1 and parsed['lines'][1]['advice'] == 'do y'
    with pytest.raises(ValueError, match=r"status 'PASS' is not one of \['OK', 'WARN'"):
        Line('d', 'PASS', '')


# ---------------------------------------------------------------- model zoo
def test_zoo_lookup_on_a_shipped_coco_config():
    model = Config.fromfile(ZOO_SSIM).model
    entry = zoo_entry(model.teacher_ckpt, model.teacher_config)
    assert entry['matched_by'] == 'checkpoint' and entry['box_ap'] == 39.4
    assert entry['name'] == 'faster-rcnn_r101_fpn_1x_coco'
    # a local file of another name: found by the config's name instead
    entry = zoo_entry('/data/my_teacher.pth', model.teacher_config)
    assert entry['matched_by'] == 'config' and entry['box_ap'] == 39.4
    demo = Config.fromfile(DEMO_PAIR).model
    assert zoo_entry(demo.teacher_ckpt, demo.teacher_config) is None


def test_reasons_put_class_order_first_when_boxes_are_found():
    assert checks.teacher_reasons(dict(ap50=2.0, ap50_agnostic=60.0))[0] == 'classes'
    assert checks.teacher_reasons(dict(ap50=1.0, ap50_agnostic=1.5))[0] == 'mismatch'
    assert checks.teacher_reasons(dict(ap50=50.0, ap50_agnostic=60.0))[0] == 'mismatch'


# ---------------------------------------------------------------- command line
@pytest.mark.parametrize('argv, message', [
    (['--amp', '--device', 'cpu'], '--amp needs a CUDA device, got --device cpu'),
    (['--iters', '0'], '--iters must be >= 1, got 0'),
    (['--val-images', '-1'], '--val-images must be >= 1, got -1'),
])
def test_bad_command_lines_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args([SSIM, *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------- balance and AMP on the model
@pytest.fixture(scope='module')
def demo_model(tmp_path_factory):
    cfg = copy.deepcopy(Config.fromfile(DEMO_PAIR).model)
    cfg.teacher_ckpt = save_random_teacher(str(tmp_path_factory.mktemp('t') / 't.pth'))
    cfg.distill_losses = dict(loss_mse=dict(type='FeatureMSELoss', loss_weight=2.0))
    torch.manual_seed(0)
    return MODELS.build(cfg).train()


def test_balance_suggests_the_weight_that_brings_the_share_to_one(demo_model):
    loss = demo_model.distill_losses['loss_mse']
    base = checks.check_balance(demo_model, [synthetic_batch()], max_norm=None)
    loss.loss_weight = 2000.0
    try:
        heavy = checks.check_balance(demo_model, [synthetic_batch()], max_norm=1.0)
    finally:
        loss.loss_weight = 2.0
    share = base[0].data['share']
    # the gradient is linear in the weight: 1000 x the weight, 1000 x the share
    assert heavy[0].data['share'] == pytest.approx(1000 * share, rel=1e-4)
    assert heavy[0].status == 'WARN' and 'drowns the detection loss' in heavy[0].advice
    # FeatureMSELoss has no parameters: the student owns the whole norm
    clip = heavy[-1]
    assert clip.check == 'gradient norm' and clip.status == 'WARN'
    assert set(clip.data['owners']) == {'student'} and 'student 100%' in clip.result
    assert 'lower the loss weights above, or raise max_norm' in clip.advice
    suggested = heavy[0].data['suggested_weight']
    assert suggested == pytest.approx(2.0 / share, rel=1e-4)
    assert f'loss_weight {suggested:.3g} brings the share to 1' in heavy[0].advice
    total = heavy[1].data['total'][0]
    assert heavy[1].check == 'gradient norm' and heavy[1].status == \
        ('WARN' if total > checks.CLIP_WARN_FACTOR else 'OK')
    assert base[1].result.endswith('no clip_grad')


def test_a_nonfinite_loss_is_a_fail_line_not_a_traceback(demo_model):
    loss = demo_model.distill_losses['loss_mse']
    loss.loss_weight = float('inf')
    try:
        lines = checks.guarded('balance', lambda: checks.check_balance(demo_model, [synthetic_batch()],
                                                                       None))
    finally:
        loss.loss_weight = 2.0
    (line, ) = lines
    assert line.check == 'balance' and line.status == 'FAIL'
    assert 'non-finite distillation loss: loss_mse' in line.result
    assert 'learning rate' in line.advice


def test_a_config_without_a_distiller_exits_2(capsys):
    student = osp.join(REPO, 'configs', 'demo', 'faster-rcnn_r18-tiny_fpn_shapes.py')
    with pytest.raises(SystemExit) as exit_info:
        main([student, '--device', 'cpu'])
    assert exit_info.value.code == 2
    assert "model.type is 'FasterRCNN'; preflight checks FeatureDistillDetector" in \
        capsys.readouterr().err


class ConvDistiller(torch.nn.Module):
    """A conv student and a fixed teacher map, with the distiller's ``loss`` contract.

    The full demo distiller cannot run under CPU autocast: mmcv's CPU NMS has no bfloat16
    kernel (the reason preflight refuses --amp on CPU). ``loss_mse`` is kd_det's
    FeatureMSELoss (float32 inside autocast), ``loss_raw`` the same error left in the
    autocast dtype.
    """

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.target = torch.randn(2, 8, 16, 16)
        self.distill_losses = dict(loss_mse=MODELS.build(dict(type='FeatureMSELoss')),
                                   loss_raw=None)

    def loss(self, inputs, samples):
        feats = self.conv(inputs)
        return dict(loss_det=feats.abs().mean(),
                    loss_mse=self.distill_losses['loss_mse'](feats, self.target),
                    loss_raw=(feats - self.target.to(feats.dtype)).pow(2).mean())


def test_amp_compares_each_distillation_loss_with_float32():
    model, inputs = ConvDistiller(), torch.randn(2, 3, 16, 16)
    values = checks.amp_losses(model, (inputs, []), 'cpu', torch.bfloat16)
    with torch.no_grad():
        reference = float(((model.conv(inputs) - model.target) ** 2).mean())
    assert values['loss_mse']['float32'] == pytest.approx(reference, rel=1e-6)
    assert values['loss_raw']['float32'] == pytest.approx(reference, rel=1e-6)
    # bfloat16 convolution, float32 loss: close (bfloat16 keeps ~3 significant digits)
    assert values['loss_mse']['amp'] == pytest.approx(reference, rel=0.02)
    assert values['loss_mse']['amp_dtype'] == 'float32'
    assert values['loss_raw']['amp_dtype'] == 'bfloat16'
    lines = {line.check: line for line in checks.check_amp(model, (inputs, []), 'cpu',
                                                            torch.bfloat16)}
    assert lines['amp loss_mse'].status == 'OK'
    assert lines['amp loss_raw'].status == 'WARN' and 'float32' in lines['amp loss_raw'].advice
    assert 'result in bfloat16' in lines['amp loss_raw'].result


class MemoryDistiller(torch.nn.Module):
    """A convolution distilled by a real RRDLoss, whose memory each loss() call fills."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.target = torch.randn(4, 8, 16, 16)
        self.distill_losses = torch.nn.ModuleDict(dict(loss_rrd=MODELS.build(dict(
            type='RRDLoss', mode='image', in_channels=8, teacher_channels=8, num_levels=1,
            embed_dim=8, queue_size=64, exclude='self'))))

    def loss(self, inputs, samples):
        feats = self.conv(inputs)
        return dict(loss_rrd=self.distill_losses['loss_rrd']([feats], [self.target]))


def test_amp_passes_start_from_the_same_memory_and_leave_it_untouched():
    """Both passes of the AMP check see the state the model had (not the float32 pass's
    entries in RRD's memory), and the check changes no buffer of the model."""
    model, inputs = MemoryDistiller(), torch.randn(4, 3, 16, 16)
    model.loss(inputs, None)  # one step of history in the memory
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {}
    for autocast in (False, True):
        fresh = copy.deepcopy(model)
        torch.manual_seed(0)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            expected[autocast] = float(fresh.loss(inputs, None)['loss_rrd'])
    values = checks.amp_losses(model, (inputs, None), 'cpu', torch.bfloat16)['loss_rrd']
    assert values['float32'] == pytest.approx(expected[False], rel=1e-6)
    assert values['amp'] == pytest.approx(expected[True], rel=1e-6)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes'))
    # 24 val images, 8 scored: CocoMetric must score those 8 only (else 2/3 count as missed)
    generate_dataset(root, num_train=4, num_val=24, num_tune=1, seed=0)
    return root


def data_options(root):
    return ['--cfg-options', f'train_dataloader.dataset.data_root={root}/',
            f'val_dataloader.dataset.data_root={root}/',
            f'val_evaluator.ann_file={root}/annotations/instances_val.json',
            'train_dataloader.batch_size=2', 'val_dataloader.batch_size=4']


def preflight(tmp_path, root, *extra, options=()):
    work = str(tmp_path / 'pf')
    code = main([SSIM, '--iters', '2', '--val-images', '8', '--device', 'cpu',
                 '--work-dir', work, *extra, *data_options(root), *options])
    with open(osp.join(work, 'preflight.json')) as f:
        report = json.load(f)
    assert osp.isfile(osp.join(work, 'preflight.md')) and report['exit_code'] == code
    return code, {line['check']: line for line in report['lines']}


@pytest.mark.slow
@needs_shipped
def test_good_config_passes(tmp_path, shapes, capsys):
    code, lines = preflight(tmp_path, shapes, '--teacher-ckpt', SHIPPED)
    assert code == 0
    assert all(line['status'] == 'OK' for line in lines.values()), lines
    assert set(lines) == {'teacher load', 'teacher classes', 'teacher mAP', 'balance loss_ssim',
                          'gradient norm', 'steps student', 'steps teacher', 'steps distill',
                          'overhead', 'memory'}
    assert lines['teacher classes']['result'] == '7 dataset classes, equal'
    teacher = lines['teacher mAP']['data']
    assert teacher['images'] == 8 and teacher['map'] > 30 and teacher['expected'] is None
    steps = lines['steps distill']['data']
    assert len(steps['losses']) == 2 and 'loss_ssim' in steps['losses'][0]
    assert lines['overhead']['data']['ratio'] > 0
    out = capsys.readouterr().out
    assert '| teacher mAP | OK |' in out and 'verdict: OK' in out


@pytest.mark.slow
def test_teacher_from_another_model_fails_at_load(tmp_path, shapes):
    other = save_random_teacher(str(tmp_path / 'student.pth'),
                                osp.join(REPO, 'configs', 'demo',
                                         'faster-rcnn_r18-tiny_fpn_shapes.py'))
    code, lines = preflight(tmp_path, shapes, '--teacher-ckpt', other)
    assert code == 1 and list(lines) == ['teacher load']
    line = lines['teacher load']
    assert line['status'] == 'FAIL' and 'CheckpointError' in line['result']
    assert 'shape mismatches' in line['result'] and 'Traceback' not in line['result']
    assert 'teacher_config' in line['advice']


@pytest.mark.slow
@needs_shipped
def test_shuffled_class_order_fails_naming_it(tmp_path, shapes):
    state = torch.load(SHIPPED, map_location='cpu', weights_only=True)
    weights = state['state_dict']
    for key in ('roi_head.bbox_head.fc_cls.weight', 'roi_head.bbox_head.fc_cls.bias'):
        rows = weights[key]  # K classes then background
        weights[key] = torch.cat([rows[:-1].roll(1, 0), rows[-1:]])
    path = str(tmp_path / 'shuffled.pth')
    torch.save(state, path)
    code, lines = preflight(tmp_path, shapes, '--teacher-ckpt', path)
    assert code == 1
    line = lines['teacher mAP']
    assert line['status'] == 'FAIL' and line['data']['reasons'][0] == 'classes'
    assert 'wrong dataset classes / class order' in line['advice']
    assert line['data']['ap50_agnostic'] > 20 > line['data']['ap50']


@pytest.mark.slow
@needs_shipped
def test_loss_weight_1000x_warns_with_the_weight_to_use(tmp_path, shapes):
    code, lines = preflight(tmp_path, shapes, '--teacher-ckpt', SHIPPED,
                            options=['model.distill_losses.loss_ssim.loss_weight=4000'])
    line = lines['balance loss_ssim']
    assert code == 0 and line['status'] == 'WARN'
    assert line['data']['share'] > checks.SHARE_RANGE[1]
    assert line['data']['suggested_weight'] == pytest.approx(4000 / line['data']['share'])
    assert 'drowns the detection loss' in line['advice']


def test_missing_data_fails_naming_the_file_and_the_setting(tmp_path):
    teacher = save_random_teacher(str(tmp_path / 'teacher.pth'))
    missing = str(tmp_path / 'no_data')
    code, lines = preflight(tmp_path, missing, '--teacher-ckpt', teacher)
    assert code == 1 and list(lines) == ['teacher load', 'teacher classes', 'teacher mAP',
                                         'train data']
    assert lines['teacher load']['status'] == 'OK'
    assert lines['teacher classes']['status'] == 'WARN'  # a checkpoint without class names
    for check, loader in (('teacher mAP', 'val_dataloader'), ('train data', 'train_dataloader')):
        line = lines[check]
        assert line['status'] == 'FAIL' and f'{loader}: no such file {missing}/' in line['result']
        assert f'--cfg-options {loader}.dataset.data_root=DIR/' in line['advice']


@pytest.mark.slow
def test_tools_script_exits_1_on_fail(tmp_path, shapes):
    import subprocess
    import sys
    missing = str(tmp_path / 'nope.pth')
    proc = subprocess.run([sys.executable, 'tools/preflight.py', SSIM,
                           '--teacher-ckpt', missing, '--device', 'cpu', '--work-dir',
                           str(tmp_path / 'w'), *data_options(shapes)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert '| teacher load | FAIL |' in proc.stdout and 'nope.pth' in proc.stdout
