"""tools/analysis/plot_curves.py on two tiny synthetic mmengine scalar logs."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from matplotlib.image import imread

from testing_utils import REPO, run_tool

TOOL = osp.join(REPO, 'tools', 'analysis', 'plot_curves.py')


def write_run(work_dir: str, loss_keys: list) -> None:
    """A work dir whose ``<timestamp>/vis_data/scalars.json`` logs 4 iterations, 2 epochs."""
    vis = osp.join(work_dir, '20260101_000000', 'vis_data')
    os.makedirs(vis)
    with open(osp.join(vis, 'scalars.json'), 'w') as f:
        for it in range(1, 5):
            entry = {key: 1.0 / it for key in loss_keys}
            entry.update(lr=0.01, iter=it, step=it, epoch=(it + 1) // 2)
            f.write(json.dumps(entry) + '\n')
            if it % 2 == 0:
                f.write(json.dumps({'coco/bbox_mAP': 0.1 * it, 'step': it // 2}) + '\n')


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
