"""find_resumable_checkpoint (``--resume`` without a path): the newest checkpoint that loads,
never a truncated or deleted one, with a warning naming each file it skips."""
from unittest import mock

import torch

from kd_det.engine import find_resumable_checkpoint
from kd_det.engine.safe_checkpoint_hook import TMP_SUFFIX


def write_checkpoints(work_dir, iters, last=None):
    for it in iters:
        torch.save({'meta': {'iter': it}, 'state_dict': {'w': torch.zeros(4)}},
                   str(work_dir / f'iter_{it}.pth'))
    if last is not None:
        (work_dir / 'last_checkpoint').write_text(str(work_dir / last))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def find_with_warnings(work_dir):
    with mock.patch('kd_det.engine.resume.print_log') as log:
        found = find_resumable_checkpoint(str(work_dir))
    return found, [c.args[0] for c in log.call_args_list if c.kwargs.get('level')]


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path):
    write_checkpoints(tmp_path, [2, 4, 6], last='iter_6.pth')
    truncate(tmp_path / 'iter_6.pth')
    found, warnings = find_with_warnings(tmp_path)
    assert found == str(tmp_path / 'iter_4.pth')
    assert any(f"skipping {tmp_path / 'iter_6.pth'}" in w and 'truncated' in w
               for w in warnings), warnings


def test_resume_trusts_a_good_last_checkpoint(tmp_path):
    # an older run's higher-numbered file does not win over what last_checkpoint names
    write_checkpoints(tmp_path, [2, 12], last='iter_2.pth')
    assert find_with_warnings(tmp_path) == (str(tmp_path / 'iter_2.pth'), [])


def test_resume_without_last_checkpoint_takes_the_highest_number(tmp_path):
    write_checkpoints(tmp_path, [9, 10])
    (tmp_path / ('iter_12.pth' + TMP_SUFFIX)).write_bytes(b'half')
    (tmp_path / 'best_coco_bbox_mAP_iter_11.pth').write_bytes(b'')
    found, warnings = find_with_warnings(tmp_path)
    assert found == str(tmp_path / 'iter_10.pth')
    assert len(warnings) == 1 and 'last_checkpoint is missing' in warnings[0]


def test_resume_names_a_deleted_checkpoint_and_finds_none(tmp_path):
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_3.pth'))
    (tmp_path / 'epoch_2.pth').write_bytes(b'not a checkpoint')
    found, warnings = find_with_warnings(tmp_path)
    assert found is None
    assert 'epoch_3.pth' in warnings[0] and 'epoch_2.pth' in warnings[1]
    assert find_resumable_checkpoint(str(tmp_path / 'empty')) is None
