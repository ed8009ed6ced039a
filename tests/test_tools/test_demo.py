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
    # a second run reuses every finished run instead of training again: the teacher's
    # training (--quick trains one) and evaluation, and each student
    again = run_tool('tools/demo.py', '--quick', '--work-dir', work, timeout=300).stdout
    assert again.count('reusing finished run') == 2 + len(METHODS)
    assert '] starting' not in again


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


def test_the_gfl_family_has_its_own_students_and_trains_its_teacher(capsys):
    demo = load_demo()
    args = demo.parse_args(['--family', 'gfl'])
    assert args.methods == ['baseline', 'crosskd', 'ld'] and args.teacher == 'train'
    assert demo.method_argv('ld', 'gfl')[0].endswith('ld_gfl_r34h-to-r18t_fpn_shapes.py')
    assert demo.method_argv('baseline', 'gfl')[0].endswith('gfl_r18-tiny_fpn_shapes.py')
    for family, method in (('gfl', 'ssim'), ('faster-rcnn', 'crosskd'), ('gfl', 'seed')):
        with pytest.raises(SystemExit):
            demo.parse_args(['--family', family, '--methods', method])
        assert f'not a method of --family {family}' in capsys.readouterr().err
    # every family's distillation configs are taught by the teacher the family trains
    from mmengine.config import Config
    for family in demo.FAMILIES.values():
        for method, config in family['methods'].items():
            cfg = Config.fromfile(osp.join(demo.CONFIGS, config))
            if method != 'baseline':
                assert osp.basename(cfg.model.teacher_config) == family['teacher'], config


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


FAKE_TRAIN = '''import json, os, sys
work_dir = sys.argv[sys.argv.index('--work-dir') + 1]
with open(os.path.join(work_dir, 'calls.jsonl'), 'a') as f:
    f.write(json.dumps(sys.argv[1:]) + '\\n')
print('Epoch(train) [1][10/10]', flush=True)
open(os.path.join(work_dir, 'last_checkpoint'), 'w').write('epoch_1.pth')
sys.exit(int(os.environ.get('FAKE_EXIT', '0')))
'''


def test_an_interrupted_run_resumes_from_its_checkpoint_and_only_its_own(tmp_path, monkeypatch):
    """A training run saves every epoch; started again after an interruption with the same
    key it passes --resume and keeps the seconds already spent; with another key it does
    not resume someone else's checkpoint."""
    demo = load_demo()
    script, config = tmp_path / 'fake_train.py', tmp_path / 'student.py'
    script.write_text(FAKE_TRAIN)
    config.write_text('epochs = 2\n')
    work = tmp_path / 'run'

    def attempt(options, exit_code):
        monkeypatch.setenv('FAKE_EXIT', str(exit_code))
        run = demo.Run('s', [str(script), str(config), '--work-dir', str(work),
                             '--cfg-options', *options], str(work), 'tune')
        run.start(threads=1).wait()
        run.reader.join()
        calls = [json.loads(line) for line in open(work / 'calls.jsonl')]
        return run, calls[-1]

    run, first = attempt(['randomness.seed=0'], exit_code=-9 % 256)  # killed mid-training
    assert first[-1] == 'default_hooks.checkpoint.interval=1' and '--resume' not in first
    state = json.loads((work / 'demo_run.json').read_text())
    assert state['key'] == run.key and state['attempts'] == 1 and state['seconds'] > 0
    run, second = attempt(['randomness.seed=0'], exit_code=0)
    assert second[-2:] == ['default_hooks.checkpoint.interval=1', '--resume']
    assert json.loads((work / 'demo_run.json').read_text())['attempts'] == 2
    assert json.loads((work / 'demo_run.json').read_text())['seconds'] > state['seconds']
    # another seed is another run: the checkpoint left in the directory is not resumed
    _, other = attempt(['randomness.seed=1'], exit_code=0)
    assert '--resume' not in other
    with pytest.raises(ValueError, match='--cfg-options'):
        demo.Run('s', [str(script), str(config)], str(work), 'tune').command()
