"""The demo's --quick mode end to end: data, teacher, distillation, COCO evaluation, table."""
import json
import math
import os.path as osp

import importlib.util

import matplotlib.image as mpimg
import pytest

from kd_det.demo import report
from testing_utils import REPO, run_tool

METHODS = ['baseline', 'ssim', 'rcka']  # the default students


def load_demo():
    spec = importlib.util.spec_from_file_location('demo', osp.join(REPO, 'tools', 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    work = str(tmp_path / 'demo')
    out = run_tool('tools/demo.py', '--quick', '--work-dir', work, timeout=900).stdout
    assert 'teacher' in out and 'gain AP' in out
    with open(osp.join(work, 'results.json')) as f:
        results = json.load(f)
    assert sorted(results['runs']) == sorted(METHODS)
    for method in METHODS:
        (run,) = results['runs'][method]
        ap = run['metrics']['coco/bbox_mAP']
        assert isinstance(ap, float) and 0.0 <= ap <= 1.0 and math.isfinite(run['time'])
        assert set(run['metrics']) >= {'coco/bbox_mAP_50', 'coco/bbox_mAP_75',
                                       'coco/bbox_mAP_s', 'coco/bbox_mAP_m'}
        assert osp.isfile(osp.join(run['work_dir'], 'epoch_1.pth'))
    assert results['teacher']['checkpoint'].startswith(work)
    summary = results['summary']
    for method in METHODS[1:]:
        expected = summary[method]['AP']['mean'] - summary['baseline']['AP']['mean']
        assert math.isclose(summary[method]['gain'], expected)
    table = open(osp.join(work, 'results.md')).read()
    assert table.count('\n|') == 1 + 1 + 1 + len(METHODS)  # header, rule, teacher, runs
    for png in ('ap_chart.png', 'loss_curves.png', 'ssim_similarity.png'):
        image = mpimg.imread(osp.join(work, png))
        assert image.shape[0] > 200 and image.shape[1] > 300
    # a second run reuses every finished run instead of training again
    again = run_tool('tools/demo.py', '--quick', '--work-dir', work, timeout=300).stdout
    assert again.count('reusing finished run') == 1 + len(METHODS)


def test_method_variants_and_bad_methods():
    demo = load_demo()
    assert demo.method_config('rrd') == ('rrd', [])
    assert demo.method_config('rrd[a.b=0.1,c=none]') == ('rrd', ['a.b=0.1', 'c=none'])
    args = demo.parse_args(['--methods', 'kd[model.x=1]', '--work-dir', 'w'])
    assert args.methods == ['baseline', 'kd[model.x=1]']
    assert demo.parse_args([]).methods == METHODS
    # the named set 'seed' adds RRD and UniKD; sets and methods mix, without duplicates
    assert demo.parse_args(['--methods', 'rcka', 'seed', 'kd']).methods == [
        'baseline', 'rcka', 'ssim', 'rrd', 'unikd', 'kd']
    config = demo.method_argv('kd[model.x=1]')[0]
    assert config.endswith('kd_faster-rcnn_r34h-to-r18t_fpn_shapes.py')
    with pytest.raises(SystemExit):
        demo.parse_args(['--methods', 'ssimm'])
    with pytest.raises(SystemExit):
        demo.parse_args(['--jobs', '0'])


def test_a_run_is_reused_only_while_its_config_is_unchanged(tmp_path):
    demo = load_demo()
    base, config = tmp_path / 'base.py', tmp_path / 'student.py'
    base.write_text('lr = 0.01\n')
    config.write_text("_base_ = './base.py'\nepochs = 2\n")

    def key(split='tune'):
        return demo.Run('s', ['tools/train.py', str(config)], str(tmp_path / 'w'), split).key
    first = key()
    assert key() == first and key('val') != first
    base.write_text('lr = 0.02\n')  # an edit in a base config reruns the run too
    assert key() != first
    base.write_text('lr = 0.01\n')
    assert key() == first


@pytest.mark.parametrize('runs, cpus, jobs, expected', [
    (3, 2, None, (3, 1)),    # the default demo on 2 cores: all 3 at once, 1 thread each
    (5, 2, None, (3, 1)),    # the seed set: one run more than cores, the rest queue
    (1, 2, None, (1, 2)),    # a lone run (the teacher) gets every core
    (2, 8, None, (2, 4)),    # fewer runs than cores: the cores shared out
    (3, 2, 2, (2, 1)),       # --jobs wins
    (3, 1, 4, (4, 1)),       # never fewer than one thread
])
def test_plan_jobs(runs, cpus, jobs, expected):
    assert load_demo().plan_jobs(runs, cpus, jobs) == expected


def test_cpu_description_names_the_cpu():
    text = report.cpu_description()
    assert report.machine_description().startswith(text)
    assert text and 'None' not in text
    if osp.isfile('/proc/cpuinfo'):
        cpuinfo = open('/proc/cpuinfo').read()
        model = next((line.split(':', 1)[1].strip() for line in cpuinfo.splitlines()
                      if line.startswith('model name')), None)
        assert model is None or text.startswith(model)
        assert ('AVX-512' in text) == ('avx512f' in cpuinfo.split())
