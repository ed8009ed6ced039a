"""tools/analysis/benchmark_save.py: both writers leave the same bytes, rows printed, bad input."""
import importlib.util
import os
import os.path as osp

import pytest

from testing_utils import REPO


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'benchmark_save', osp.join(REPO, 'tools', 'analysis', 'benchmark_save.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_save_times_both_writers_and_cleans_up(tmp_path, capsys):
    tool = load_tool()
    tool.main(['--mb', '2', '--saves', '2', '--dir', str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('2.0 MiB state dict, 2 saves each')
    assert [line.split()[0] for line in lines[1:]] == ['mmengine', 'kd_det']
    assert os.listdir(tmp_path) == []  # the temporary folder is gone


def test_time_saves_writers_write_what_they_are_given(tmp_path):
    tool = load_tool()
    data = tool.serialised_state(1)
    assert 2**20 < len(data) < 2**20 + 2**16
    written = []

    def writer(path):
        with open(path, 'wb') as f:
            f.write(data)
        written.append(path)
    times = tool.time_saves([writer, writer], str(tmp_path / 'x.pth'), 3)
    assert len(times) == 2 and all(len(t) == 3 and min(t) >= 0 for t in times)
    assert len(written) == 6 and (tmp_path / 'x.pth').read_bytes() == data


def test_benchmark_save_refuses_bad_sizes():
    with pytest.raises(SystemExit):
        load_tool().main(['--mb', '0'])
