"""Training steps of a distiller, of its student alone and of its teacher alone, timed and
measured side by side: the core of tools/analysis/benchmark_distill.py and of preflight.

The three phases run on the same preprocessed batches:

(a) ``student``: the student built from ``model.student`` alone (starting from the
    distillation student's weights), one training step (loss + backward + optimizer step);
(b) ``teacher``: the teacher work the distiller needs, through its own
    ``teacher_outputs`` under ``no_grad`` (on the RoIs the student sampled in (a) when a
    loss reads RoI outputs);
(c) ``distill``: the distiller's training step.

c cannot cost less than a + b, so c / (a + b) - 1 is the overhead distillation adds.
"""
import copy
import itertools
import os.path as osp
import platform
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.runner import Runner
from torch import Tensor, nn

from ..models.distill_sources import ROI_SOURCES, StudentTaps
from .memory import PeakMemory

PHASES = ('student', 'teacher', 'distill')
MIB = 2**20

Batch = Tuple[Tensor, List[DetDataSample]]  # inputs, samples
Step = Callable[[Batch, int], None]


def train_batches(cfg, model: nn.Module, num: int, seed: int = 0) -> List[Batch]:
    """The first ``num`` batches of ``cfg.train_dataloader``, through ``model``'s data
    preprocessor in training mode (onto the model's device)."""
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
    batches = []
    for data in itertools.islice(loader, num):
        data = model.data_preprocessor(data, True)
        batches.append((data['inputs'], data['data_samples']))
    return batches


def build_optim_wrapper_for(cfg, model: nn.Module, amp: bool,
                            lr: Optional[float] = None) -> OptimWrapper:
    """The config's optim wrapper for ``model`` (AmpOptimWrapper with ``amp``), with the
    learning rate replaced by ``lr`` unless None."""
    optim_cfg = copy.deepcopy(cfg.optim_wrapper)
    if lr is not None:
        optim_cfg.optimizer.lr = lr
    if amp:
        optim_cfg.type = 'AmpOptimWrapper'
        optim_cfg.setdefault('loss_scale', 'dynamic')
    return build_optim_wrapper(model, optim_cfg)


def train_step(model: nn.Module, wrapper: OptimWrapper,
               rois: Optional[Dict[int, Tensor]] = None,
               log: Optional[List[Dict[str, float]]] = None) -> Step:
    """One training step (mmengine's ``train_step`` less the data preprocessing).

    With ``rois``, records the RoIs the student sampled per batch index; with ``log``,
    appends each step's losses as ``{name: float}`` (one host sync per step).
    """
    def step(batch: Batch, index: int) -> None:
        inputs, samples = batch
        taps = StudentTaps(model, {'roi_cls'} if rois is not None else set())
        with wrapper.optim_context(model), taps:
            losses = model.loss(inputs, samples)
        if rois is not None:
            rois[index] = taps.get('rois')
        loss, log_vars = model.parse_losses(losses)
        wrapper.update_params(loss)
        if log is not None:
            log.append({name: float(value.detach()) if isinstance(value, Tensor) else
                        float(value) for name, value in log_vars.items()})
    return step


def teacher_step(model: nn.Module, rois: Dict[int, Tensor], amp: bool,
                 device: str) -> Step:
    """The teacher work of a distillation step (``model.teacher_outputs``): backbone, neck
    and the heads the losses read, on the RoIs the student sampled in phase (a)."""
    def step(batch: Batch, index: int) -> None:
        autocast = torch.autocast(torch.device(device).type, dtype=torch.float16) \
            if amp else nullcontext()
        with torch.no_grad(), autocast:
            model.teacher_outputs(batch[0], rois.get(index))
    return step


def resident_bytes(modules: Sequence[nn.Module], wrapper: Optional[OptimWrapper]) -> int:
    """Bytes of the parameters and buffers of ``modules`` and the optimizer's state."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    if wrapper is not None:
        tensors += [v for state in wrapper.optimizer.state.values() for v in state.values()
                    if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def device_name(device: str, threads: Optional[int], amp: bool) -> str:
    """A readable name of the device the steps ran on."""
    if device.startswith('cuda'):
        return torch.cuda.get_device_name(device) + (' AMP' if amp else '')
    name = platform.processor() or platform.machine()
    if osp.isfile('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            name = next((line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name')), name)
    return f'{name}, {threads or torch.get_num_threads()} thread(s)'


class PhaseSteps:
    """The three phases of ``model`` (a FeatureDistillDetector built from ``cfg.model``).

    Builds the student alone from ``cfg.model.student`` with the distillation student's
    weights, one optim wrapper each from ``cfg.optim_wrapper`` (learning rate ``lr``
    unless None, AmpOptimWrapper with ``amp``) and moves both models to ``device``.
    ``logs[phase]`` collects the losses of every student and distill step.
    """

    def __init__(self, cfg, model: nn.Module, device: str = 'cpu', amp: bool = False,
                 lr: Optional[float] = None, log_losses: bool = False) -> None:
        self.device = device
        self.student = MODELS.build(cfg.model.student)
        self.student.load_state_dict(model.student.state_dict())
        model.to(device).train()
        self.student.to(device).train()
        self.model = model
        self.wrappers = dict(student=build_optim_wrapper_for(cfg, self.student, amp, lr),
                             distill=build_optim_wrapper_for(cfg, model, amp, lr))
        self.logs: Dict[str, List[Dict[str, float]]] = dict(student=[], distill=[])
        rois: Dict[int, Tensor] = {}
        reads_rois = bool(model.sources & set(ROI_SOURCES))
        self.steps = dict(
            student=train_step(self.student, self.wrappers['student'],
                               rois if reads_rois else None,
                               self.logs['student'] if log_losses else None),
            teacher=teacher_step(model, rois, amp, device),
            distill=train_step(model, self.wrappers['distill'], None,
                               self.logs['distill'] if log_losses else None))

    def run(self, phase: str, batch: Batch, index: int) -> None:
        """One step of ``phase``; seeded by ``index``, so (a) and (c) sample alike."""
        torch.manual_seed(index)
        self.steps[phase](batch, index)

    def time(self, batches: Sequence[Batch], warmup: int, clock: str = 'wall',
             phases: Sequence[str] = PHASES) -> Dict[str, List[float]]:
        """Seconds per step of each phase over ``batches``, interleaved a, b, c, a, ...;
        the first ``warmup`` batches are run untimed. ``clock``: 'wall' or 'cpu' (the
        process's CPU time, which leaves out time other jobs hold the cores)."""
        sync = torch.cuda.synchronize if self.device.startswith('cuda') else (lambda: None)
        now = time.process_time if clock == 'cpu' else time.perf_counter
        times: Dict[str, List[float]] = {phase: [] for phase in phases}
        for index, batch in enumerate(batches):
            for phase in phases:
                sync()
                start = now()
                self.run(phase, batch, index)
                sync()
                if index >= warmup:
                    times[phase].append(now() - start)
        return times

    def resident_bytes(self) -> Dict[str, int]:
        """Per phase: bytes its models keep (parameters, buffers, optimizer state)."""
        return dict(student=resident_bytes([self.student], self.wrappers['student']),
                    teacher=resident_bytes([self.model.teacher], None),
                    distill=resident_bytes([self.model, self.model.teacher],
                                           self.wrappers['distill']))

    def peak_mib(self, batch: Batch, phases: Sequence[str] = PHASES) -> Dict[str, float]:
        """Peak memory of one step of each phase on ``batch``: resident bytes plus the
        peak growth (CUDA ``max_memory_allocated``, CPU peak RSS; see memory.py). Lowers
        glibc's mmap threshold for the process on CPU: call it after any timing."""
        resident = self.resident_bytes()
        meter = PeakMemory(self.device)
        return {phase: (resident[phase] + meter.measure(
            lambda: self.run(phase, batch, 0))) / MIB for phase in phases}
