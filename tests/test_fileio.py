"""Every file kd_det writes gets the permissions the user's umask gives (0o666 less the umask
for files, as ``open`` and mmengine's own saves create them); the checkpoint hook's files are
in tests/test_engine/test_safe_checkpoint_hook.py."""
import os
import stat

import pytest
import torch

from kd_det.checkpoint import safe_load
from kd_det.demo.synthetic_coco import generate_dataset
from kd_det.export import export_student, publish_checkpoint
from kd_det.fileio import TMP_SUFFIX, atomic_torch_save, atomic_write, current_umask

# umask -> mode of a new file: 022 lets the group and others read, 077 keeps it private
UMASKS = {0o022: 0o644, 0o077: 0o600, 0o002: 0o664}


@pytest.fixture(params=sorted(UMASKS), ids=oct)
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def distill_checkpoint(path):
    torch.save({'state_dict': {'student.w': torch.arange(4.0), 'connectors.0.w': torch.ones(2),
                               'loss_heads.x': torch.zeros(1)},
                'meta': {'dataset_meta': {'classes': ('a', 'b')}, 'iter': 7}}, path)
    return str(path)


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_write_follows_the_umask(tmp_path, umask):
    atomic_write(tmp_path / 'a.bin', b'data')
    assert mode(tmp_path / 'a.bin') == UMASKS[umask]
    # the reference: what a plain open() gives under the same umask
    with open(tmp_path / 'plain.bin', 'wb') as f:
        f.write(b'data')
    assert mode(tmp_path / 'a.bin') == mode(tmp_path / 'plain.bin')


def test_atomic_torch_save_round_trips(tmp_path):
    obj = {'state_dict': {'w': torch.randn(3, 2)}, 'meta': {'iter': 2}}
    atomic_torch_save(obj, tmp_path / 'sub' / 'c.pth')
    loaded = safe_load(str(tmp_path / 'sub' / 'c.pth'))
    assert torch.equal(loaded['state_dict']['w'], obj['state_dict']['w'])
    assert loaded['meta'] == {'iter': 2}
    assert os.listdir(tmp_path / 'sub') == ['c.pth']  # no temporary file left


def test_exported_student_follows_the_umask(tmp_path, umask):
    src = distill_checkpoint(tmp_path / 'epoch_1.pth')
    assert export_student(src, str(tmp_path / 'student.pth')) == {'kept': 1, 'dropped': 2}
    assert mode(tmp_path / 'student.pth') == UMASKS[umask]
    student = safe_load(str(tmp_path / 'student.pth'))
    assert list(student['state_dict']) == ['w']
    assert not [n for n in os.listdir(tmp_path) if n.endswith(TMP_SUFFIX)]


def test_published_checkpoint_follows_the_umask(tmp_path, umask):
    src = distill_checkpoint(tmp_path / 'epoch_1.pth')
    counts = publish_checkpoint(src, str(tmp_path / 'pub.pth'), half=True)
    assert counts['tensors'] == 3 and counts['bytes'] == os.path.getsize(tmp_path / 'pub.pth')
    assert mode(tmp_path / 'pub.pth') == UMASKS[umask]
    assert safe_load(str(tmp_path / 'pub.pth'))['state_dict']['student.w'].dtype == torch.float16


def test_synthetic_dataset_follows_the_umask(tmp_path, umask):
    result = generate_dataset(str(tmp_path / 'ds'), num_train=1, num_val=1, num_tune=1,
                              image_size=(32, 32), objects_per_image=(1, 1),
                              object_size=(8, 16))
    assert mode(result['root']) == 0o777 & ~umask  # a folder: 0o777 less the umask
    assert mode(result['train_ann_file']) == UMASKS[umask]
