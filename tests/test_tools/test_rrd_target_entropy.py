"""The RRD diagnostic on the shipped demo teacher and a small generated demo dataset."""
import os.path as osp
import re
import sys

import pytest

from kd_det.demo.synthetic_coco import generate_dataset
from testing_utils import REPO

sys.path.insert(0, osp.join(REPO, 'tools', 'analysis'))
import rrd_target_entropy  # noqa: E402

CONFIG = osp.join(REPO, 'configs', 'demo', 'rrd_faster-rcnn_r34h-to-r18t_fpn_shapes.py')
TEACHER = osp.join(REPO, 'checkpoints', 'demo_teacher_r34-half_shapes.pth')


@pytest.mark.slow
def test_class_signal_of_both_embeddings_on_the_shipped_teacher(tmp_path, capsys):
    data = generate_dataset(str(tmp_path / 'data'), num_train=40, num_val=1, num_tune=1)
    rrd_target_entropy.main([CONFIG, '--checkpoint', TEACHER, '--images', '40',
                             '--data-root', data['root'], '--knn', '1', '--taus', '0.05'])
    out = capsys.readouterr().out
    knn = dict(re.findall(r'^(box-mean|roi-embed)\s+([0-9.]+)\s*$', out, re.M))
    purity = dict(re.findall(r'^(box-mean|roi-embed)\s+image\s+0\.050\s+1\s+[0-9.]+\s+0\.000'
                             r'\s+[0-9.]+\s+([0-9.]+)$', out, re.M))
    assert set(knn) == set(purity) == {'box-mean', 'roi-embed'}
    # the trained teacher's classifier input separates the classes; its box means do not
    assert float(knn['roi-embed']) > 0.6 > float(knn['box-mean'])
    assert float(purity['roi-embed']) > float(purity['box-mean']) + 0.2
