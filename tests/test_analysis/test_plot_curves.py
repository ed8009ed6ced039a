"""tools/analysis/plot_curves.py on two tiny synthetic mmengine scalar logs."""
import json
import os
import os.path as osp
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
from matplotlib.image import imread

from kd_det.analysis.curves import curves_figure, load_scalars
from testing_utils import REPO, run_tool

TOOL = osp.join(REPO, 'tools', 'analysis', 'plot_curves.py')


def write_run(work_dir: str, loss_keys: list, eval_every: int = 1, map_scale=0.1) -> None:
    """A work dir whose ``<timestamp>/vis_data/scalars.json`` logs 4 iterations, 2 epochs,
    evaluated every ``eval_every`` epochs with mAP ``map_scale * iteration``."""
    vis = osp.join(work_dir, '20260101_000000', 'vis_data')
    os.makedirs(vis)
    with open(osp.join(vis, 'scalars.json'), 'w') as f:
        for it in range(1, 5):
            entry = {key: 1.0 / it for key in loss_keys}
            entry.update(lr=0.01, iter=it, step=it, epoch=(it + 1) // 2)
            f.write(json.dumps(entry) + '\n')
            if it % (2 * eval_every) == 0:
                f.write(json.dumps({'coco/bbox_mAP': map_scale * it, 'step': it // 2}) + '\n')


def map_axis(tmp_path, eval_every: int):
    """The mAP panel of curves_figure for two runs (mAP 0.1 / 0.05 per iteration)."""
    write_run(str(tmp_path / 'baseline'), ['loss'], eval_every, map_scale=0.05)
    write_run(str(tmp_path / 'ssim'), ['loss', 'loss_ssim'], eval_every)
    logs = {label: load_scalars(str(tmp_path / label)) for label in ('baseline', 'ssim')}
    fig = curves_figure(logs, ['loss', 'loss_ssim'])
    return fig, fig.axes[2]


@pytest.mark.slow
def test_plot_curves_overlays_two_runs(tmp_path):
    write_run(str(tmp_path / 'baseline'), ['loss', 'loss_cls'])
    write_run(str(tmp_path / 'ssim'), ['loss', 'loss_cls', 'loss_ssim'])
    out = str(tmp_path / 'curves.png')
    proc = run_tool(TOOL, str(tmp_path / 'baseline'), str(tmp_path / 'ssim'), '--out', out,
                    '--labels', 'baseline', 'ssim')
    assert 'loss, loss_cls, loss_ssim' in proc.stdout
    # 3 loss panels + mAP: 2 rows of 3 panels of 4.2 x 3.2 inches at 100 dpi
    assert imread(out).shape[:2] == (640, 1260)


@pytest.mark.slow
def test_plot_curves_names_a_missing_work_dir(tmp_path):
    missing = str(tmp_path / 'no_such_run')
    proc = subprocess.run([sys.executable, TOOL, missing, '--out', str(tmp_path / 'x.png')],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert missing in proc.stderr and 'scalars.json' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not osp.exists(tmp_path / 'x.png')


def test_map_panel_one_evaluation_per_run_is_a_bar_per_run(tmp_path):
    # evaluated once, after epoch 2 (iteration 4): AP 100 * 0.05 * 4 and 100 * 0.1 * 4
    fig, ax = map_axis(tmp_path, eval_every=2)
    assert [t.get_text() for t in ax.get_xticklabels()] == ['baseline', 'ssim']
    assert [p.get_height() for p in ax.patches] == pytest.approx([20.0, 40.0])
    assert len(ax.get_lines()) == 0 and 'after epoch 2' in ax.get_title()
    plt.close(fig)


def test_map_panel_several_evaluations_is_a_line_per_run_over_whole_epochs(tmp_path):
    fig, ax = map_axis(tmp_path, eval_every=1)
    lines = ax.get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[1, 2], [1, 2]]
    assert [list(line.get_ydata()) for line in lines] == [pytest.approx([10.0, 20.0]),
                                                          pytest.approx([20.0, 40.0])]
    assert len(ax.patches) == 0 and ax.get_xlabel() == 'epoch'
    assert all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)
