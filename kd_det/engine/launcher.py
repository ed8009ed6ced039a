"""What tools/train.py and tools/test.py share: their common arguments, what they do to
a config before building the Runner, and how they build it."""
import argparse
import datetime
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import Runner


def tool_parser(description: str, config_help: str, work_dir_help: str
                ) -> argparse.ArgumentParser:
    """A parser with the arguments tools/train.py and tools/test.py share with
    mmdet's tools: ``config``, ``--work-dir``, ``--cfg-options``, ``--launcher``
    and ``--local_rank``. Positional arguments added later follow ``config``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help=config_help)
    parser.add_argument('--work-dir', help=work_dir_help)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=yyy format)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def parse_command_line(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, and export LOCAL_RANK as torch.distributed.launch did."""
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_runner(cfg: Config) -> Runner:
    """The config's Runner (``runner_type`` when the config names one), as mmdet's tools build it."""
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def apply_command_line(cfg: Config, args: argparse.Namespace) -> Config:
    """``--launcher``, ``--cfg-options`` and ``--work-dir`` (default
    ``./work_dirs/<config name>``), as mmdet's tools apply them; then
    :func:`setup_cpu_distributed`."""
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    setup_cpu_distributed(cfg)
    return cfg


def setup_cpu_distributed(cfg: Config) -> None:
    """Make ``--launcher pytorch`` work without CUDA (gloo on CPU processes).

    mmengine 0.10's pytorch launcher calls ``torch.cuda.set_device(LOCAL_RANK)``
    before ``init_process_group``, and its Runner wraps the model in DDP with
    ``device_ids=[LOCAL_RANK]``; both fail without CUDA. This initialises the
    process group itself (the Runner then skips its own init) with gloo (NCCL
    needs CUDA) and lets DDP wrap the CPU model without ``device_ids``.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available() \
            or torch.distributed.is_initialized():
        return
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'gloo')
    if backend != 'gloo':
        print_log(f'CUDA is not available: using the gloo backend instead of {backend!r}',
                  logger='current')
    if dist_cfg.get('timeout') is not None:
        dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    torch.distributed.init_process_group(backend='gloo', **dist_cfg)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
