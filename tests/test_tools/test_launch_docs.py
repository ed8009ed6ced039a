"""The launch commands of README.md and docs/launch.md: every config they name exists, every
flag is accepted by the tool's parser, the shell scripts hand torchrun / srun what the docs
say, and each shipped config's auto_scale_lr is its recipe's total batch."""
import copy
import glob
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest
import mmengine

from testing_utils import REPO
from kd_det import test as test_tool
from kd_det import train as train_tool
from kd_det.configs import read_config

LAUNCH = osp.join(REPO, 'docs', 'launch.md')
DOCS = [osp.join(REPO, 'README.md'), LAUNCH] + sorted(
    glob.glob(osp.join(REPO, 'docs', '*.md')) + glob.glob(osp.join(REPO, 'configs', '*',
                                                                   'README.md')))
DOCS = list(dict.fromkeys(DOCS))
CONFIGS = sorted(osp.join(root, f) for root, _, files in os.walk(osp.join(REPO, 'configs'))
                 for f in files if f.endswith('.py') and '_base_' not in root)
CPU_RECIPES = ('demo', 'demo_modern')  # one process; every other recipe is 8 GPUs
RECIPE_GPUS = 8
TOOLS = ('tools/train.py', 'tools/test.py', 'tools/dist_train.sh', 'tools/dist_test.sh',
         'tools/slurm_train.sh', 'tools/slurm_test.sh', 'kd_det.train', 'kd_det.test')


def doc_commands(path):
    """The lines of the bash blocks of ``path`` that run a train or test tool."""
    with open(path) as f:
        blocks = re.findall(r'```(?:bash|shell)\n(.*?)```', f.read(), flags=re.S)
    lines = [line.split('  #')[0].strip() for block in blocks
             for line in block.replace('\\\n', ' ').splitlines()]
    return [line for line in lines if any(tool in line.split() for tool in TOOLS)]


COMMANDS = [(osp.relpath(doc, REPO), line) for doc in DOCS for line in doc_commands(doc)]


def test_the_docs_show_every_launch():
    launch = [line for doc, line in COMMANDS if doc == osp.relpath(LAUNCH, REPO)]
    for needed in ('--auto-scale-lr', 'NNODES=2 NODE_RANK=1', 'slurm_train.sh', 'dist_test.sh',
                   'slurm_test.sh', '--resume', 'mmdet::'):
        assert any(needed in line for line in launch), needed
    # one process on a GPU recipe (not the CPU demo's): the learning rate must be scaled
    one_gpu = [line for _, line in COMMANDS if line.startswith('python tools/train.py')
               and not line.split()[2].startswith(tuple(f'configs/{d}/' for d in CPU_RECIPES))]
    assert one_gpu and all('--auto-scale-lr' in line for line in one_gpu), one_gpu


def run_script(line, tmp_path):
    """Run a documented ``bash tools/*.sh`` line with stand-ins for python and srun that
    print what they were given; returns (launcher args, tool, tool args)."""
    fake = tmp_path / 'fake'
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$(basename "$0")" "$@" > '
                    f'{tmp_path}/argv.txt\n')
    fake.chmod(0o755)
    (tmp_path / 'srun').symlink_to(fake)
    env = dict(os.environ, PYTHON=str(fake), PATH=f'{tmp_path}:{os.environ["PATH"]}')
    words = shlex.split(line)
    while '=' in words[0]:  # NNODES=2 ... before bash
        key, value = words.pop(0).split('=', 1)
        env[key] = value
    subprocess.run(words, cwd=REPO, env=env, check=True, capture_output=True)
    argv = (tmp_path / 'argv.txt').read_text().splitlines()
    script = next(i for i, a in enumerate(argv) if a.endswith(('tools/train.py',
                                                               'tools/test.py')))
    return argv[:script], osp.basename(argv[script]), argv[script + 1:], env


_CONFIGS = {}


def cached_config(path):
    """``read_config``, each file parsed once per session (the docs name few configs)."""
    if path not in _CONFIGS:
        _CONFIGS[path] = read_config(path)
    return copy.deepcopy(_CONFIGS[path])


def parsed(tool, argv, monkeypatch):
    """``argv`` through the tool's own parser (exits on an unknown flag)."""
    module = train_tool if tool == 'train.py' else test_tool
    monkeypatch.setattr(sys, 'argv', [tool, *argv])
    monkeypatch.setenv('LOCAL_RANK', '0')
    return module.parse_args()


@pytest.mark.slow  # about 1 s a command: reads its config
@pytest.mark.parametrize('doc, line', COMMANDS, ids=[f'{d}:{i}' for i, (d, _) in
                                                     enumerate(COMMANDS)])
def test_documented_command_is_accepted(doc, line, tmp_path, monkeypatch):
    words = shlex.split(line)
    words = words[next(i for i, w in enumerate(words) if '=' not in w):]  # after NNODES=2 ...
    if words[0] == 'bash':
        launcher, tool, argv, env = run_script(line, tmp_path)
        if 'slurm' in words[1]:
            assert f'--ntasks={env.get("GPUS", "8")}' in launcher
            assert '--launcher=slurm' in argv
        else:
            gpus = words[3] if 'dist_train' in words[1] else words[4]
            assert f'--nproc_per_node={gpus}' in launcher
            assert f'--nnodes={env.get("NNODES", "1")}' in launcher
            assert f'--node_rank={env.get("NODE_RANK", "0")}' in launcher
            assert f'--master_addr={env.get("MASTER_ADDR", "127.0.0.1")}' in launcher
            assert argv[argv.index('--launcher') + 1] == 'pytorch'
    else:
        tool = 'train.py' if any(w.endswith(('tools/train.py', 'kd_det.train'))
                                 for w in words[:3]) else 'test.py'
        argv = words[2:] if words[1] != '-m' else words[3:]
    args = parsed(tool, argv, monkeypatch)
    if args.config.startswith('my_'):
        return  # the README's own-config example
    args.config = args.config if '::' in args.config else osp.join(REPO, args.config)
    cfg = cached_config(args.config)  # it exists and reads
    monkeypatch.setattr(train_tool, 'read_config', cached_config)
    if tool == 'train.py':
        args.work_dir = str(tmp_path / 'work')  # --resume without a path looks there
        args.launcher = 'none'  # parsed above; here the config alone, no process group
        cfg = train_tool.build_config(args)
        assert cfg.auto_scale_lr.get('enable', False) == args.auto_scale_lr
    for option in args.cfg_options or {}:
        assert cfg.get(option.split('.')[0]) is not None, option


def test_offline_prefetch_names_the_configs_teacher_and_backbone():
    with open(DOCS[1]) as f:
        text = f.read()
    cfg = read_config(osp.join(REPO, 'configs', 'ssim',
                               'ssim_faster-rcnn_r101-to-r50_fpn_2x_coco.py'))
    assert f"safe_load_url('{cfg.model.teacher_ckpt}')" in text
    assert cfg.model.student.backbone.init_cfg.checkpoint == 'torchvision://resnet50'
    with open(osp.join(osp.dirname(mmengine.__file__), 'hub', 'torchvision_0.12.json')) as f:
        backbone = osp.basename(json.load(f)['resnet50'])  # mmengine's torchvision:// table
    assert f'init_cfg.checkpoint=checkpoints/{backbone}' in text


@pytest.mark.slow  # about 1 s a config
@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_auto_scale_lr_is_the_recipes_total_batch(path):
    """--auto-scale-lr divides by base_batch_size: it must be the batch the configured
    learning rate was set for (8 GPUs x batch_size; the CPU demo: one process)."""
    cfg = cached_config(path)
    gpus = 1 if osp.basename(osp.dirname(path)) in CPU_RECIPES else RECIPE_GPUS
    total = gpus * cfg.train_dataloader.batch_size
    assert cfg.auto_scale_lr.base_batch_size == total, (
        f'{osp.relpath(path, REPO)}: auto_scale_lr.base_batch_size '
        f'{cfg.auto_scale_lr.base_batch_size}, recipe batch {gpus} x '
        f'{cfg.train_dataloader.batch_size} = {total}')
