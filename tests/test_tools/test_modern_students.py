"""RTMDet and DINO students end to end through tools/train.py on data the repository
generates itself (the synthetic shapes, 8 training images at 128 px): train, exact resume,
export, the export loads strict into plain mmdet and tools/test.py evaluates it.

RTMDet keeps its recipe's hooks under the distiller: the EMA averages the student (and the
connectors and loss heads), never the teacher, and the exported student is the EMA
student, exactly as mmdet saves and tests a plain RTMDet; the pipeline switches at its
epoch (here after a resume), and the teacher sees the student's augmented batch."""
import glob
import json
import os.path as osp
import shutil

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmdet.registry import MODELS

from testing_utils import (COCO128_DATA, REPO, coco128_root, needs_coco128, resumed_runner, run_tool,
                           save_random_teacher, write_config)
from kd_det.demo.synthetic_coco import generate_dataset
from kd_det.export import export_student

pytestmark = pytest.mark.slow
DEMO = osp.join(REPO, 'configs', 'demo_modern')
RTMDET = dict(student='rtmdet_nano_shapes.py', teacher='rtmdet_micro_shapes.py',
              distill='cwd-kd_rtmdet_micro-to-nano_shapes.py')
RTMDET_MMYOLO = dict(RTMDET, distill='cwd_rtmdet_micro-to-nano_shapes.py')
DINO = dict(student='dino-4scale_r18-tiny_shapes.py', teacher='dino-5scale_r34-half_shapes.py',
            distill='pkd_dino-5scale-to-4scale_shapes.py')
# Point a demo_modern config at the generated dataset: 2 iterations of 4 images per epoch.
DATA = '''
data_root = {root!r} + '/'
train_dataloader = dict(batch_size=4, sampler=dict(shuffle=False),
                        dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
default_hooks = dict(logger=dict(interval=1))
log_processor = dict(window_size=1)  # log each iteration's values, not running means
randomness = dict(seed=0)
'''


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('shapes') / 'data')
    return generate_dataset(root, num_train=8, num_val=4, num_tune=1, image_size=(128, 128),
                            seed=0)['root']


def family(directory, shapes, names, extra=''):
    """Configs of one family on the generated data, and a random teacher checkpoint."""
    data = DATA.format(root=shapes)
    ckpt = save_random_teacher(osp.join(directory, 'teacher.pth'),
                               osp.join(DEMO, names['teacher']))
    student = write_config(directory, 'student.py',
                           f"_base_ = {osp.join(DEMO, names['student'])!r}\n" + data)
    distill = write_config(directory, 'distill.py',
                           f"_base_ = {osp.join(DEMO, names['distill'])!r}\n" + data
                           + f'model = dict(teacher_ckpt={ckpt!r})\n' + extra)
    return dict(student=student, distill=distill, teacher_ckpt=ckpt,
                work=osp.join(directory, 'work'))


def read_test_metrics(work_dir):
    files = sorted(glob.glob(osp.join(work_dir, '*', '[0-9]*_[0-9]*.json')))
    with open(files[-1]) as f:
        return json.load(f)


def check_export_and_test(run, ckpt_path, tmp_path):
    """Export the student; it loads strict into plain mmdet and tools/test.py gives it
    the same COCO metrics as the distillation config with the distillation checkpoint."""
    exported = str(tmp_path / 'student.pth')
    export_student(ckpt_path, exported)
    plain = MODELS.build(Config.fromfile(run['student']).model)
    plain.load_state_dict(torch.load(exported)['state_dict'], strict=True)
    run_tool('tools/test.py', run['student'], exported, '--work-dir', str(tmp_path / 'plain'))
    run_tool('tools/test.py', run['distill'], ckpt_path, '--work-dir', str(tmp_path / 'kd'))
    plain_metrics = read_test_metrics(str(tmp_path / 'plain'))
    kd_metrics = read_test_metrics(str(tmp_path / 'kd'))
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50'):
        assert isinstance(plain_metrics[key], float) and plain_metrics[key] == kd_metrics[key]
    return torch.load(exported)['state_dict']


# ------------------------------------------------------------------------------- RTMDet
@pytest.fixture(scope='module')
def rtmdet(shapes, tmp_path_factory):
    """Three epochs by tools/train.py, then a resume by tools/train.py into the fourth and
    last, where the pipeline switches and distillation stops (switch_epoch = stop_epoch = 3,
    0-based)."""
    run = family(str(tmp_path_factory.mktemp('rtmdet')), shapes, RTMDET)
    first = run_tool('tools/train.py', run['distill'], '--work-dir', run['work'],
                     '--cfg-options', 'train_cfg.max_epochs=3')
    # kept aside: the checkpoint hook keeps the newest ones only
    run['epoch_3_path'] = shutil.copy(osp.join(run['work'], 'epoch_3.pth'),
                                      osp.join(run['work'], '..', 'epoch_3.pth'))
    run['epoch_3'] = torch.load(run['epoch_3_path'])
    second = run_tool('tools/train.py', run['distill'], '--work-dir', run['work'], '--resume')
    run['logs'] = (first.stdout + first.stderr, second.stdout + second.stderr)
    return run


def test_rtmdet_pipeline_switches_after_resume(rtmdet):
    first, second = rtmdet['logs']
    assert 'Switch pipeline now!' not in first
    assert 'resumed epoch: 3, iter: 6' in second
    assert 'Switch pipeline now!' in second
    ckpt = torch.load(osp.join(rtmdet['work'], 'epoch_4.pth'))
    assert ckpt['meta']['epoch'] == 4 and ckpt['meta']['iter'] == 8


def test_rtmdet_distillation_stops_at_the_switch_epoch(rtmdet):
    """The losses act in epochs 0-2 and are 0 in epoch 3, the resumed run's."""
    runs = sorted(glob.glob(osp.join(rtmdet['work'], '*', 'vis_data', 'scalars.json')))
    assert len(runs) == 2
    logged = []
    for path in runs:
        with open(path) as f:
            logged.append([json.loads(line) for line in f if '"loss_cwd"' in line])
    before, after = logged
    assert [e['iter'] for e in before] == [1, 2, 3, 4, 5, 6]
    assert [e['iter'] for e in after] == [7, 8]
    for name in ('loss_cwd', 'loss_kd_cls'):
        assert all(e[name] > 0 for e in before), name
        assert all(e[name] == 0 for e in after), name
    assert all(e['loss_cls'] > 0 for e in after)  # the student trains on


def test_rtmdet_ema_averages_the_student_never_the_teacher(rtmdet):
    ckpt = rtmdet['epoch_3']
    state, ema_state = ckpt['state_dict'], ckpt['ema_state_dict']
    # mmengine's EMAHook saves the averaged weights as `state_dict` and the raw ones,
    # prefixed `module.`, as `ema_state_dict`: exactly the distiller's own entries
    assert set(ema_state) == {'module.' + k for k in state} | {'steps'}
    assert not any(k.startswith(('teacher', 'module.teacher')) for k in state)
    assert any(k.startswith('student.') for k in state)
    assert any(k.startswith('connectors.') for k in state)
    assert int(ema_state['steps']) == 6


def test_rtmdet_resume_is_exact(rtmdet):
    """The resumed model holds the raw weights, its EMA the averaged ones, both as saved."""
    cfg = Config.fromfile(rtmdet['distill'])
    cfg.work_dir = rtmdet['work']
    cfg.resume, cfg.load_from = True, rtmdet['epoch_3_path']
    runner = Runner.from_cfg(cfg)
    runner._train_loop = runner.build_train_loop(runner._train_loop)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.param_schedulers = runner.build_param_scheduler(runner.param_schedulers)
    runner.call_hook('before_run')  # the EMAHook builds its averaged copy here
    runner.load_or_resume()
    saved = rtmdet['epoch_3']
    raw = {k[len('module.'):]: v for k, v in saved['ema_state_dict'].items()
           if k.startswith('module.')}
    state = runner.model.state_dict()
    assert set(state) == set(raw)
    assert all(torch.equal(state[k], v) for k, v in raw.items())
    ema_hook = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    averaged = ema_hook.ema_model.module.state_dict()
    assert all(torch.equal(averaged[k], v) for k, v in saved['state_dict'].items())
    # the averaged copy covers what trains: no teacher entry, and the live teacher is
    # none of its tensors
    assert not any('teacher' in k for k in ema_hook.ema_model.avg_parameters)
    teacher_ids = {id(p) for p in runner.model.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in ema_hook.ema_model.avg_parameters.values()}
    assert runner.iter == 6 and runner.epoch == 3
    opt_state = runner.optim_wrapper.state_dict()['state']
    for idx, param_state in saved['optimizer']['state'].items():
        torch.testing.assert_close(opt_state[idx]['exp_avg'], param_state['exp_avg'])


def test_rtmdet_exported_student_is_the_ema_student(rtmdet, tmp_path):
    path = osp.join(rtmdet['work'], 'epoch_4.pth')
    ckpt = torch.load(path)
    exported = check_export_and_test(rtmdet, path, tmp_path)
    averaged = {k[len('student.'):]: v for k, v in ckpt['state_dict'].items()
                if k.startswith('student.')}
    raw = {k[len('module.student.'):]: v for k, v in ckpt['ema_state_dict'].items()
           if k.startswith('module.student.')}
    assert set(exported) == set(averaged) == set(raw)
    assert all(torch.equal(exported[k], v) for k, v in averaged.items())
    floats = [k for k, v in raw.items() if v.is_floating_point()]
    differ = [k for k in floats if not torch.equal(exported[k], raw[k])]
    assert len(differ) > len(floats) // 2, (len(differ), len(floats))


def test_rtmdet_teacher_sees_the_augmented_batch(shapes, tmp_path):
    """One epoch in-process, CachedMosaic and CachedMixUp on: the teacher's backbone gets
    exactly the student's (augmented, normalised, padded) images."""
    run = family(str(tmp_path), shapes, RTMDET)
    cfg = Config.fromfile(run['distill'])
    cfg.work_dir = run['work']
    cfg.train_cfg.max_epochs = 1
    for loss in cfg.model.distill_losses.values():
        loss.stop_epoch = 1  # distil in the one epoch
    cfg.visualizer.name = f'visualizer_{osp.basename(str(tmp_path))}'
    runner = Runner.from_cfg(cfg)
    seen = {}
    model = runner.model

    def record(side):
        def hook(module, args):
            if side == 'teacher' or module.training:  # not the student's validation
                seen.setdefault(side, []).append(args[0].clone())
        return hook
    handles = [model.student.backbone.register_forward_pre_hook(record('student')),
               model.teacher.backbone.register_forward_pre_hook(record('teacher'))]
    try:
        runner.train()
    finally:
        for h in handles:
            h.remove()
    pipeline = [t['type'] for t in cfg.train_dataloader.dataset.pipeline]
    assert 'CachedMosaic' in pipeline and 'CachedMixUp' in pipeline
    # two training steps; the second mosaics its images (CachedMosaic mixes from its 5th
    # image on). The teacher also ran on validation batches first (the teacher check).
    assert len(seen['student']) == 2
    for train_input in seen['student']:
        assert train_input.shape == (4, 3, 128, 128)
        assert any(torch.equal(train_input, t) for t in seen['teacher'])


def test_rtmdet_mmyolo_recipe_trains_end_to_end(shapes, tmp_path):
    """MMYOLO's recipe form (configs/rtmdet/cwd_rtmdet_*: the raw neck convs tapped on both
    networks, student 1x1 conv + BN connectors, teacher BN) through tools/train.py for one
    epoch of 2 iterations with the student's EMA: CWD acts in every step, the taps pair in
    order, and the checkpoint holds the student and connectors, averaged and raw, with no
    teacher and no teacher-connector state."""
    from kd_det.analysis.curves import load_scalars
    run = family(str(tmp_path), shapes, RTMDET_MMYOLO)
    out = run_tool('tools/train.py', run['distill'], '--work-dir', run['work'],
                   '--cfg-options', 'train_cfg.max_epochs=1')
    assert ('taps level pairing (in tap order): student 0 <- teacher 0, student 1 <- '
            'teacher 1, student 2 <- teacher 2') in out.stdout + out.stderr
    values = [e['loss_cwd'] for e in load_scalars(run['work'])['train'] if 'loss_cwd' in e]
    assert len(values) == 2 and all(0 < v < float('inf') for v in values), values
    ckpt = torch.load(osp.join(run['work'], 'epoch_1.pth'))
    state = set(ckpt['state_dict'])
    assert {k.split('.')[0] for k in state} == {'student', 'connectors'}
    assert set(ckpt['ema_state_dict']) == {'module.' + k for k in state} | {'steps'}


# --------------------------------------------------------------------------------- DINO
@pytest.fixture(scope='module')
def dino(shapes, tmp_path_factory):
    run = family(str(tmp_path_factory.mktemp('dino')), shapes, DINO)
    out = run_tool('tools/train.py', run['distill'], '--work-dir', run['work'],
                   '--cfg-options', 'train_cfg.max_epochs=1')
    run['log'] = out.stdout + out.stderr
    return run


def test_dino_trains_with_levels_paired_by_stride(dino):
    assert ('neck level pairing (by stride): student 0 (stride 8) <- teacher 1 (stride 8), '
            'student 1 (stride 16) <- teacher 2 (stride 16), student 2 (stride 32) <- '
            'teacher 3 (stride 32), student 3 (stride 64) <- teacher 4 (stride 64)') in dino['log']
    from kd_det.analysis.curves import load_scalars
    train = load_scalars(dino['work'])['train']
    values = [e['loss_pkd'] for e in train if 'loss_pkd' in e]
    assert len(values) == 2 and all(0 < v < float('inf') for v in values)


def test_dino_resume_is_exact_and_export_tests(dino, tmp_path):
    saved_path = osp.join(dino['work'], 'epoch_1.pth')
    cfg = Config.fromfile(dino['distill'])
    cfg.work_dir, cfg.resume, cfg.load_from = dino['work'], True, saved_path
    runner = resumed_runner(cfg)
    state, saved = runner.model.state_dict(), torch.load(saved_path)
    assert set(state) == set(saved['state_dict'])
    assert all(torch.equal(state[k], v) for k, v in saved['state_dict'].items())
    assert runner.iter == saved['meta']['iter'] == 2
    check_export_and_test(dino, saved_path, tmp_path)


# ------------------------------------------------------------------------------ coco128
# the families' detectors with COCO's 80 classes; RTMDet keeping every box for the metric
# and padding batches to a multiple of 32 (its CSPNeXtPAFPN concatenates upsampled levels;
# the shared coco128 pipelines only resize, where RTMDet's own pad)
COCO80 = {
    'rtmdet': 'data_preprocessor=dict(pad_size_divisor=32), bbox_head=dict(num_classes=80), '
              'test_cfg=dict(score_thr=0.0)',
    'dino': 'bbox_head=dict(num_classes=80)',
}


# one epoch here: RTMDet's losses, which stop at the pipeline switch, act in that epoch
STOP_AFTER_ONE_EPOCH = ("model.update(distill_losses=dict(loss_cwd=dict(stop_epoch=1), "
                        "loss_kd_cls=dict(stop_epoch=1)))\n")


@needs_coco128
@pytest.mark.parametrize('name', sorted(COCO80))
def test_family_on_coco128(name, tmp_path):
    """One epoch on 8 coco128 images (the suite's shared real data), export, tools/test.py."""
    names = RTMDET if name == 'rtmdet' else DINO
    d = str(tmp_path)
    teacher = write_config(d, 'teacher.py', f"_base_ = {osp.join(DEMO, names['teacher'])!r}\n"
                           + f'model = dict({COCO80[name]})\n')
    ckpt = save_random_teacher(osp.join(d, 'teacher.pth'), teacher)
    data = COCO128_DATA.format(coco128=coco128_root(), epochs=1)
    distill = write_config(d, 'distill.py', f"_base_ = {osp.join(DEMO, names['distill'])!r}\n"
                           + data + f'model = dict(teacher_config={teacher!r}, '
                           f'teacher_ckpt={ckpt!r}, student=dict({COCO80[name]}))\n'
                           + (STOP_AFTER_ONE_EPOCH if name == 'rtmdet' else ''))
    student = write_config(d, 'student.py', f"_base_ = {osp.join(DEMO, names['student'])!r}\n"
                           + data + f'model = dict({COCO80[name]})\n')
    work = osp.join(d, 'work')
    run_tool('tools/train.py', distill, '--work-dir', work)
    check_export_and_test(dict(student=student, distill=distill), osp.join(work, 'epoch_1.pth'),
                          tmp_path)
