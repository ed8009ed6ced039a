"""The demo's training and test runs: one subprocess each, cached by their settings, resumed
after an interruption, several at once."""
import glob
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Dict, List, Optional, Tuple

from mmengine.config import Config

from kd_det.analysis.curves import load_scalars
from kd_det.demo.report import AP_COLUMNS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def plan_jobs(num_runs: int, cpus: int, jobs: Optional[int] = None) -> Tuple[int, int]:
    """(runs at once, threads per run) for ``num_runs`` training runs on ``cpus`` cores.

    Default: every run at once, one thread each, up to ``cpus + 1`` runs; with fewer runs
    than cores, the cores are shared out (``cpus // runs`` threads each). On 2 cores the
    default 3 runs (work a <= b <= c, in one-thread seconds) all start together: while two
    or more run, both cores are busy, so the wall time is about a / 2 + c, within
    (c - b) / 2 of the 2-core optimum (a + b + c) / 2. The alternative, two at a time and
    the third given both threads once they end, takes c + a / s, s being the 2-thread
    speed-up of these small models: longer whenever s < 2, i.e. always in practice (and
    the third with one thread as soon as b ends takes max(c, b + a), longer still). With
    more runs than ``cpus + 1`` the rest queue and start as others end (longest first,
    see tools/demo.py): one run more than cores keeps every core busy until fewer than
    ``cpus`` runs are left, for the memory of one more process. Each run's wall time then
    includes the sharing: the runs' times add up to more than the demo took.
    """
    if jobs is None:
        jobs = min(max(num_runs, 1), cpus + 1)
    return jobs, max(1, cpus // jobs)


class Run:
    """One tools/train.py or tools/test.py job with its own work dir.

    ``argv`` is the tool and its arguments; a training run's ``argv`` ends with its
    ``--cfg-options``. The run is keyed by the split, ``argv`` and the config's resolved
    contents: a finished run of the same key (``demo_result.json``) is reused. A training
    run saves a checkpoint every epoch; one that was interrupted (a killed process, a
    stopped machine) resumes from its last checkpoint when started again with the same key
    (``demo_run.json`` holds the key and the training seconds so far). A resumed run's data
    order is the uninterrupted run's; its augmentation draws after the resume are not.
    """

    def __init__(self, name: str, argv: List[str], work_dir: str, split: str) -> None:
        self.name, self.argv, self.work_dir = name, argv, work_dir
        # argv[1] is the config of tools/train.py and tools/test.py: its resolved contents
        # are part of the key, so a run whose config was edited (its bases too) runs again
        config = Config.fromfile(argv[1]).to_dict()
        self.key = hashlib.sha1(json.dumps([split, argv, config], sort_keys=True,
                                           default=str).encode()).hexdigest()[:12]
        self.result_file = osp.join(work_dir, 'demo_result.json')
        self.state_file = osp.join(work_dir, 'demo_run.json')
        self.training = osp.basename(argv[0]).endswith('train.py')
        self.result: Optional[dict] = self.cached()

    def cached(self) -> Optional[dict]:
        """The result a finished run of the same settings left in the work dir, or None."""
        if not osp.isfile(self.result_file):
            return None
        with open(self.result_file) as f:
            cached = json.load(f)
        return cached if cached.get('key') == self.key else None

    def _earlier_attempt(self) -> Optional[dict]:
        """The state of an interrupted run of this key that left a checkpoint, or None."""
        if not (self.training and osp.isfile(self.state_file)
                and osp.isfile(osp.join(self.work_dir, 'last_checkpoint'))):
            return None
        with open(self.state_file) as f:
            state = json.load(f)
        return state if state.get('key') == self.key else None

    def command(self, resume: bool = False) -> List[str]:
        """The command line of an attempt: ``argv``, plus for a training run a checkpoint
        every epoch and, with ``resume`` (after an interrupted attempt), ``--resume``."""
        if not self.training:
            return list(self.argv)
        if '--cfg-options' not in self.argv:
            raise ValueError(f'{self.name}: a training run\'s argv must end with its '
                             f'--cfg-options, got {self.argv}')
        resume_option = ['--resume'] if resume else []
        return [*self.argv, 'default_hooks.checkpoint.interval=1', *resume_option]

    def start(self, threads: int) -> subprocess.Popen:
        """Start the next attempt (resuming an interrupted one's checkpoint) and say so."""
        os.makedirs(self.work_dir, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
        earlier = self._earlier_attempt()
        command = self.command(resume=earlier is not None)
        print(f'[{self.name}] starting{" (resuming its last checkpoint)" if earlier else ""}: '
              f'python {" ".join(self.argv[:2])} ...', flush=True)
        self.state = dict(key=self.key, seconds=earlier['seconds'] if earlier else 0.0,
                          attempts=(earlier['attempts'] if earlier else 0) + 1)
        self._save_state(0.0)
        self.log_path = osp.join(self.work_dir, 'demo_stdout.log')
        self.started = time.time()
        self.proc = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.tail: deque = deque(maxlen=40)
        self.reader = threading.Thread(target=self._follow, daemon=True)
        self.reader.start()
        return self.proc

    def _save_state(self, elapsed: float) -> None:
        with open(self.state_file, 'w') as f:
            json.dump(dict(self.state, seconds=self.state['seconds'] + elapsed), f)

    def _follow(self) -> None:
        with open(self.log_path, 'a' if self.state['attempts'] > 1 else 'w') as log:
            for line in self.proc.stdout:
                log.write(line)
                self.tail.append(line)
                if 'Epoch(' in line or 'teacher check' in line:
                    print(f'[{self.name}] {line.split(" - ")[-1].strip()[:150]}', flush=True)
                    self._save_state(time.time() - self.started)

    def finish(self) -> dict:
        self.reader.join()
        if self.proc.returncode != 0:
            raise RuntimeError(f'{self.name} failed (exit {self.proc.returncode}); log: '
                               f'{self.log_path}\n' + ''.join(self.tail))
        # time: the seconds of every attempt (each up to its last log line), not the idle gaps
        self.result = dict(key=self.key, time=self.state['seconds'] + time.time() - self.started,
                           attempts=self.state['attempts'], metrics=self._metrics(),
                           work_dir=self.work_dir)
        with open(self.result_file, 'w') as f:
            json.dump(self.result, f, indent=2)
        return self.result

    def _metrics(self) -> Dict[str, float]:
        if not self.training:  # tools/test.py: <ts>/<ts>.json
            files = sorted(glob.glob(osp.join(self.work_dir, '*', '[0-9]*_[0-9]*.json')))
            with open(files[-1]) as f:
                metrics = json.load(f)
        else:  # the newest log's: a resumed run's last attempt
            metrics = (load_scalars(self.work_dir)['val'] or [{}])[-1]
        metrics = {k: v for k, v in metrics.items() if k.startswith('coco/')}
        if not metrics:
            # mmdet's CocoMetric logs no metric when the model detected nothing (e.g. a
            # one-stage detector after a --quick epoch, all scores under score_thr): AP 0
            with open(self.log_path) as f:
                if 'The testing results of the whole dataset is empty' not in f.read():
                    raise RuntimeError(f'{self.name}: no COCO metrics in {self.work_dir}; '
                                       f'log: {self.log_path}')
            metrics = {key: 0.0 for _, key in AP_COLUMNS}
        return metrics


def run_all(runs: List[Run], jobs: Optional[int] = None) -> None:
    """Run the unfinished ``runs``, ``jobs`` at a time (default: :func:`plan_jobs`'s);
    report each as it ends."""
    todo = [r for r in runs if r.result is None]
    for r in runs:
        if r.result is not None:
            print(f'[{r.name}] reusing finished run in {r.work_dir}')
    jobs, threads = plan_jobs(len(todo), os.cpu_count() or 1, jobs)
    if todo:
        print(f'[demo] {len(todo)} run(s) to train, {min(jobs, len(todo))} at once, '
              f'{threads} thread(s) each', flush=True)
    active: List[Run] = []
    while todo or active:
        while todo and len(active) < jobs:
            run = todo.pop(0)
            run.result = run.cached()  # another demo process may have finished it meanwhile
            if run.result is not None:
                print(f'[{run.name}] reusing finished run in {run.work_dir}')
                continue
            run.start(threads)
            active.append(run)
        time.sleep(1)
        for run in [r for r in active if r.proc.poll() is not None]:
            active.remove(run)
            result = run.finish()
            print(f'[{run.name}] done in {result["time"]:.0f} s: AP '
                  f'{100 * result["metrics"]["coco/bbox_mAP"]:.1f}', flush=True)
