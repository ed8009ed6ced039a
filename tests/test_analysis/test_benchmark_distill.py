"""tools/analysis/benchmark_distill.py on the demo's tiny SSIM config, one timed step."""
import importlib.util
import os.path as osp

import pytest

from testing_utils import REPO

TOOL = osp.join(REPO, 'tools', 'analysis', 'benchmark_distill.py')
CONFIG = osp.join(REPO, 'configs', 'demo', 'ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_distill', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_benchmark_prints_and_returns_the_three_phases(capsys):
    tool = load_tool()
    result = tool.main([CONFIG, '--size', '64', '96', '--batch', '1', '--repeats', '2',
                        '--warmup', '1', '--device', 'cpu'])
    phases = ('student', 'teacher', 'distill')
    assert set(result['times']) == set(result['median']) == set(result['peak_mib']) \
        == set(phases)
    assert all(len(result['times'][p]) == 2 for p in phases)
    assert all(result['median'][p] > 0 and result['peak_mib'][p] > 0 for p in phases)
    med, peak = result['median'], result['peak_mib']
    assert result['ratio'] == med['distill'] / (med['student'] + med['teacher'])
    assert result['memory_ratio'] == peak['distill'] / (peak['student'] + peak['teacher'])
    assert result['size'] == (64, 96) and result['batch'] == 1 and result['profile'] is None

    out = capsys.readouterr().out
    assert 'c / (a + b) = ' in out
    table = [line for line in out.splitlines() if line.startswith('|')]
    assert len(table) == 3 and table[0].count('|') == table[2].count('|') == 10
    assert table[2].startswith('| ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py | ')
    assert ('command: python tools/analysis/benchmark_distill.py ' + CONFIG
            + ' --size 64 96 --batch 1 --repeats 2 --warmup 1 --device cpu --clock cpu'
            + ' --threads 1') in out


def test_shortcuts_and_device_defaults():
    tool = load_tool()
    args = tool.parse_args(['rcka', '--device', 'cpu'])
    assert (tuple(args.size), args.batch, args.threads) == ((512, 512), 2, 1)
    assert args.clock == 'cpu'
    assert osp.isfile(tool.resolve_config(args.config))
    args = tool.parse_args(['--device', 'cuda', '--amp'])
    assert (tuple(args.size), args.batch, args.threads, args.clock) == \
        ((800, 1333), 2, None, 'wall')
    assert tool.resolve_config(args.config).endswith(
        'ssim/ssim_faster-rcnn_r101-to-r50_fpn_1x_coco.py')
    assert all(osp.isfile(tool.resolve_config(name)) for name in tool.SHORTCUTS)
