"""What the 2-process DDP tests share: ``tools/dist_train.sh CFG 2`` on CPU with gloo, and a
hook module each rank imports that records its own losses, image ids and weights."""
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import time

import torch

from testing_utils import REPO

# A hook that each process of a run imports (custom_imports): after every iteration it keeps
# the process's own (unreduced) losses and image ids; after training it saves the process's
# student weights to WORK_DIR/rank{r}.pth and those records to WORK_DIR/rank{r}.json.
DUMP_HOOK = '''
import json
import math
import os.path as osp

import torch
from mmengine.dist import get_dist_info
from mmdet.registry import MODELS
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from kd_det.losses.rrd import RRDLoss


@HOOKS.register_module()
class RankDumpHook(Hook):
    priority = 'VERY_LOW'

    def before_train(self, runner):
        self.iters = []
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self.init = {k: v.detach().clone() for k, v in model.named_parameters()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.iters.append(dict(
            losses={k: v.item() for k, v in outputs.items()},
            img_ids=[int(s.img_id) for s in data_batch['data_samples']]))

    def after_train(self, runner):
        rank, world_size = get_dist_info()
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'rank{rank}.pth'))
        torch.save(self.init, osp.join(runner.work_dir, f'rank{rank}_init.pth'))
        with open(osp.join(runner.work_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(dict(world_size=world_size, wrapper=type(runner.model).__name__,
                           find_unused_parameters=getattr(
                               runner.model, 'find_unused_parameters', None),
                           trainable=[k for k, p in model.named_parameters()
                                      if p.requires_grad],
                           iters=self.iters), f)


@MODELS.register_module()
class RankZeroNaNRRDLoss(RRDLoss):
    """kd_det's RRDLoss, NaN on rank 0 in the first iteration (after its memory update)."""

    def forward(self, *args, **kwargs):
        value = super().forward(*args, **kwargs)
        if get_dist_info()[0] == 0 and MessageHub.get_current_instance().get_info('iter') == 0:
            value = value * float('nan')
        return value
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def hook_dir(root) -> str:
    """A folder holding the hook module (``kd_rank_dump``) the ranks import."""
    folder = root / 'hooks'
    folder.mkdir(exist_ok=True)
    (folder / 'kd_rank_dump.py').write_text(DUMP_HOOK)
    return str(folder)


def dist_train(cfg: str, work: str, hooks: str, *options: str) -> dict:
    """``bash tools/dist_train.sh CFG 2`` on CPU with gloo; each rank's records and weights."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([hooks, os.environ.get('PYTHONPATH', '')]))
    start = time.time()
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work,
         '--cfg-options', 'env_cfg.dist_cfg.backend=gloo', *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f'dist_train.sh exited {proc.returncode}:\n{proc.stdout[-4000:]}\n'
                             f'{proc.stderr[-6000:]}')
    print(f'2-rank run: {time.time() - start:.1f} s')
    records = []
    for rank in range(2):
        with open(osp.join(work, f'rank{rank}.json')) as f:
            records.append(json.load(f))
    states = [torch.load(osp.join(work, f'rank{rank}.pth')) for rank in range(2)]
    init = [torch.load(osp.join(work, f'rank{rank}_init.pth')) for rank in range(2)]
    return dict(work=work, records=records, states=states, init=init,
                log=proc.stdout + proc.stderr)
