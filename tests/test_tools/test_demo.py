"""The demo's --quick mode end to end: data, teacher, distillation, COCO evaluation, table."""
import json
import math
import os.path as osp

import matplotlib.image as mpimg

from testing_utils import run_tool

METHODS = ['baseline', 'ssim', 'rcka']


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
    for method in ('ssim', 'rcka'):
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
