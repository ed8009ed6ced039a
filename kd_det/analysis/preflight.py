"""Preflight's checks of a distillation config before a long run: the teacher, the loss
balance at init, real training steps and AMP. Each check returns verdict lines;
``python -m kd_det.preflight`` (kd_det/preflight.py) runs them in order."""
import copy
import statistics
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.evaluator import Evaluator
from mmengine.runner import Runner
from torch import nn

from ..checkpoint import CheckpointError
from ..models.teacher_classes import dataset_classes
from .loss_balance import DETECTOR, loss_balance
from .model_zoo import zoo_entry
from .steps import PHASES, Batch, PhaseSteps
from .teacher_eval import evaluate_teacher, primary_map
from .verdict import Line

MAP_FAIL_FRACTION = 0.5  # a teacher below this fraction of its expected AP fails
MAP_WARN_FRACTION = 0.8  # ... below this one warns (few images: the AP is noisy)
MIN_AP = 5.0  # with no expected AP, a teacher below this box AP (%) fails
SHARE_RANGE = (0.1, 10.0)  # distillation / detector gradient norm on the student's inputs
CLIP_WARN_FACTOR = 10.0  # total gradient norm above this many times clip_grad's max_norm
AMP_TOLERANCE = 0.05  # relative difference of a distillation loss under AMP vs float32
MEMORY_WARN_FRACTION = 0.9  # of the device's (or machine's) memory
CLASS_ORDER_AGNOSTIC_AP50 = 20.0  # class-agnostic AP50 (%) above which boxes are found

TEACHER_REASONS = {
    'mismatch': 'checkpoint/config mismatch: the weights belong to another model or run',
    'classes': "wrong dataset classes / class order: the teacher's class i is not the "
               "dataset's class i (metainfo classes, or a teacher trained on other data)",
    'normalisation': "wrong input normalisation: the teacher config's data_preprocessor "
                     '(mean/std, bgr_to_rgb) differs from the one it was trained with',
}


def missing_data(check: str, loader: str, err: FileNotFoundError) -> Line:
    """The FAIL line of a check that stopped on a data file ``loader``'s dataset names."""
    return Line(check, 'FAIL', f'{loader}: no such file {err.filename or err}',
                f"point {loader}.dataset at your copy of the data: --cfg-options "
                f"{loader}.dataset.data_root=DIR/ (ann_file and data_prefix are read "
                "relative to it)")


def guarded(check: str, run: Callable[[], List[Line]], loader: Optional[str] = None
            ) -> List[Line]:
    """``run()``'s lines, or one FAIL line named ``check`` when it stops on a non-finite
    loss (the distiller's ``nonfinite='error'``), on CUDA running out of memory, or (with
    ``loader``, the dataloader it reads) on a missing data file."""
    try:
        return run()
    except FileNotFoundError as err:
        if loader is None:
            raise
        return [missing_data(check, loader, err)]
    except FloatingPointError as err:
        return [Line(check, 'FAIL', str(err), "lower this loss's weight or the learning "
                     "rate; nonfinite='skip' only hides it")]
    except torch.cuda.OutOfMemoryError as err:
        return [Line(check, 'FAIL', 'out of memory: ' + str(err).splitlines()[0],
                     'lower train_dataloader.batch_size, or train with --amp')]


def build_distiller(cfg, seed: int = 0) -> Tuple[Optional[nn.Module], Line]:
    """The FeatureDistillDetector of ``cfg.model``, built and initialised as training
    does (the teacher loaded strictly); on failure ``(None, FAIL line)``."""
    ckpt = cfg.model.get('teacher_ckpt')
    torch.manual_seed(seed)
    try:
        model = MODELS.build(cfg.model)
    except (CheckpointError, OSError, ValueError) as err:  # OSError: missing file, no network
        kind = 'does not fit' if isinstance(err, CheckpointError) else 'cannot be loaded'
        return None, Line('teacher load', 'FAIL', f'{type(err).__name__}: {err}',
                          f'the teacher checkpoint {kind}: set teacher_ckpt (--teacher-ckpt) '
                          'to weights trained with teacher_config, or teacher_config to '
                          'the config they were trained with; the other checks need it')
    try:
        model.init_weights()
    except OSError as err:  # e.g. a pretrained backbone behind a URL, offline
        return None, Line('student init', 'FAIL', f'{type(err).__name__}: {err}',
                          "the student's init_cfg weights cannot be read: download them and "
                          'point init_cfg.checkpoint at the file')
    count = len(model.teacher.state_dict())
    return model, Line('teacher load', 'OK',
                       f'{count} tensors loaded strictly from {ckpt}', data=dict(tensors=count))


def check_teacher_classes(model: nn.Module, cfg) -> List[Line]:
    """The teacher checkpoint's class names against the training dataset's, as
    TeacherCheckHook checks them before training (the dataset is built without
    loading its annotations)."""
    dataset = DATASETS.build(lazy_dataset_cfg(cfg.train_dataloader.dataset))
    classes = dataset_classes(dataset)
    class_map = model.teacher_class_map
    try:
        class_map.check(classes)
    except ValueError as err:
        return [Line('teacher classes', 'FAIL', str(err).split('. ')[0],
                     "use a teacher of the dataset's class list, or set the distiller's "
                     'teacher_class_map (see kd_det/models/teacher_classes.py)')]
    teacher = class_map.teacher_classes
    if class_map.class_map == 'ignore':
        return [Line('teacher classes', 'OK', "teacher_class_map='ignore': features only")]
    if teacher is None or classes is None:
        return [Line('teacher classes', 'WARN',
                     f'{"the teacher checkpoint" if teacher is None else "the dataset"} '
                     'records no class names: not checked',
                     'save the teacher with its dataset_meta (mmengine does), or set '
                     'teacher_class_map=[teacher index per dataset class]')]
    how = 'equal' if class_map.index is None else \
        f'mapped by teacher_class_map ({len(classes)} of the teacher\'s {len(teacher)})'
    return [Line('teacher classes', 'OK', f'{len(classes)} dataset classes, {how}')]


def lazy_dataset_cfg(dataset_cfg):
    """A copy of a dataset config (wrappers included) that builds without loading data."""
    dataset_cfg = copy.deepcopy(dataset_cfg)
    for inner in ([dataset_cfg.get('dataset')] + list(dataset_cfg.get('datasets') or [])):
        if isinstance(inner, dict):
            inner.update(lazy_dataset_cfg(inner))
    dataset_cfg['lazy_init'] = True
    return dataset_cfg


def subset_loader_cfg(loader_cfg, images: int):
    """A copy of a dataloader config on the first ``images`` images of its dataset."""
    loader_cfg = loader_cfg.copy()
    loader_cfg.dataset = loader_cfg.dataset.copy()
    loader_cfg.dataset.indices = images
    return loader_cfg


def check_teacher(model: nn.Module, cfg, val_images: int,
                  expected_map: Optional[float] = None) -> List[Line]:
    """The teacher's box mAP on ``val_images`` validation images by the config's
    ``val_evaluator``, against the model zoo's (or ``expected_map``), else an absolute
    floor; a failure lists the likely reasons, the class-order one first when the
    teacher finds the boxes but names them wrong (class-agnostic AP50)."""
    loader = Runner.build_dataloader(subset_loader_cfg(cfg.val_dataloader, val_images), seed=0)
    evaluator = Evaluator(cfg.val_evaluator)
    evaluator.dataset_meta = loader.dataset.metainfo
    classes = loader.dataset.metainfo.get('classes') or ()
    result = evaluate_teacher(model, loader, evaluator, len(classes))
    key, ap = primary_map(result['metrics'])
    zoo = zoo_entry(cfg.model.get('teacher_ckpt'), cfg.model.get('teacher_config'))
    if expected_map is not None:
        expected, source = expected_map, '--expected-map'
    elif zoo is not None:
        expected = zoo['box_ap']
        source = f"mmdet model zoo {zoo['name']} (matched by its {zoo['matched_by']})"
    else:
        expected, source = None, None
    summary = (f'{key} {ap:.1f} on {result["images"]} images; AP50 {result["ap50"]:.1f}, '
               f'class-agnostic AP50 {result["ap50_agnostic"]:.1f}; '
               f'{result["detections"]} detections >= 0.3')
    data = dict(result, key=key, map=ap, expected=expected, expected_source=source, zoo=zoo)
    if expected is None:
        status = 'FAIL' if ap < MIN_AP else 'OK'
        summary += f' (no expected AP known: floor {MIN_AP:g})'
    else:
        status = 'FAIL' if ap < MAP_FAIL_FRACTION * expected else \
            'WARN' if ap < MAP_WARN_FRACTION * expected else 'OK'
        summary += f'; expected {expected:.1f} from {source}'
    advice = ''
    if status != 'OK':
        reasons = teacher_reasons(result)
        data['reasons'] = reasons
        advice = 'likely: ' + '; or '.join(TEACHER_REASONS[r] for r in reasons)
        if expected is not None and status == 'WARN':
            advice += (f' (or noise: {result["images"]} images; raise --val-images)')
    return [Line('teacher mAP', status, summary, advice, data)]


def teacher_reasons(result: dict) -> List[str]:
    """The reasons for a weak teacher, most likely first: class order when it finds the
    boxes (class-agnostic AP50 high) but scores low per class, else mismatch first."""
    if result['ap50_agnostic'] >= CLASS_ORDER_AGNOSTIC_AP50 and \
            result['ap50'] < 0.5 * result['ap50_agnostic']:
        return ['classes', 'mismatch', 'normalisation']
    return ['mismatch', 'normalisation', 'classes']


def check_balance(model: nn.Module, batches: Sequence[Batch], max_norm: Optional[float]
                  ) -> List[Line]:
    """Per distillation loss, its gradient norm on the student's input images over the
    detector's own losses' (``loss_balance``; the input gradient sums every feature level
    through the backbone), with the weight that would make the share 1; then the total
    gradient norm against ``clip_grad``'s ``max_norm``."""
    result = loss_balance(model, batches, max_norm)
    lines = []
    detector = result['inputs'][DETECTOR]
    low, high = SHARE_RANGE
    for name, norm in result['inputs'].items():
        if name == DETECTOR:
            continue
        weight = float(getattr(model.distill_losses[name], 'loss_weight', 1.0))
        share = norm / detector if detector > 0 else float('inf')
        data = dict(grad_norm=norm, detector_grad_norm=detector, share=share,
                    loss_weight=weight, feature_levels=result['levels'][name],
                    detector_feature_levels=result['levels'][DETECTOR])
        text = (f'gradient share {share:.3g} on the student\'s inputs (norm {norm:.3g} vs '
                f'the detector\'s {detector:.3g}), loss_weight {weight:g}')
        if share == 0:
            lines.append(Line(f'balance {name}', 'WARN', text,
                              'no gradient reaches the student: check its source and levels',
                              data))
        elif not low <= share <= high:
            data['suggested_weight'] = weight / share
            what = 'drowns the detection loss' if share > high else 'barely acts'
            lines.append(Line(f'balance {name}', 'WARN', text,
                              f'{what}: loss_weight {weight / share:.3g} brings the share '
                              'to 1', data))
        else:
            lines.append(Line(f'balance {name}', 'OK', text, data=data))
    totals = result['total']
    total = statistics.mean(totals)
    owners = result['owners']
    data = dict(total=totals, max_norm=max_norm, clipped=result['clipped'], owners=owners)
    if max_norm is None:
        lines.append(Line('gradient norm', 'OK', f'total {total:.3g}; no clip_grad', data=data))
    elif total > CLIP_WARN_FACTOR * max_norm:
        lines.append(Line('gradient norm', 'WARN',
                          f'total {total:.3g} = {total / max_norm:.3g} x clip_grad max_norm '
                          f'{max_norm:g}; {owner_shares(owners)}',
                          'clipping shrinks every step this much, the student\'s included: '
                          + clip_advice(max(owners, key=owners.get)), data))
    else:
        lines.append(Line('gradient norm', 'OK', f'total {total:.3g}, clip_grad max_norm '
                          f'{max_norm:g} (exceeded in {result["clipped"]} of {len(totals)} '
                          'batches)', data=data))
    return lines


def owner_shares(owners: Dict[str, float]) -> str:
    """'student 80%, distill_losses.loss_x 20%': each owner's share of the squared norm."""
    squares = {owner: norm ** 2 for owner, norm in owners.items()}
    whole = sum(squares.values()) or 1.0
    return ', '.join(f'{owner} {sq / whole:.0%}' for owner, sq in
                     sorted(squares.items(), key=lambda item: -item[1]))


def clip_advice(owner: str) -> str:
    """What lowers the gradient norm, by the owner of most of it."""
    if owner.startswith('distill_losses.'):
        return (f'most of it is the gradient of {owner}\'s own parameters (never the '
                "student's): lower the weight of the terms that train them, or raise max_norm")
    return 'lower the loss weights above, or raise max_norm'


@contextmanager
def buffers_restored(model: nn.Module) -> Iterator[None]:
    """Run the body, then put every buffer of ``model`` back as it was: a loss pass leaves
    the model's state (RRD's memory, batch-norm statistics) as it found it."""
    saved = [(buf, buf.detach().clone()) for buf in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


@torch.no_grad()
def amp_losses(model: nn.Module, batch: Batch, device: str,
               dtype: torch.dtype = torch.float16, seed: int = 0) -> Dict[str, dict]:
    """Each distillation loss on ``batch`` in float32 and under autocast(``dtype``),
    seeded alike, each pass from the model's state before both (:func:`buffers_restored`):
    ``{name: dict(float32, amp, amp_dtype)}``."""
    values = {}
    for autocast in (False, True):
        torch.manual_seed(seed)
        with buffers_restored(model), \
                torch.autocast(torch.device(device).type, dtype=dtype, enabled=autocast):
            losses = model.loss(*batch)
        values[autocast] = {name: losses[name] for name in model.distill_losses}
    return {name: dict(float32=float(values[False][name]), amp=float(values[True][name]),
                       amp_dtype=str(values[True][name].dtype).replace('torch.', ''))
            for name in model.distill_losses}


def check_amp(model: nn.Module, batch: Batch, device: str,
              dtype: torch.dtype = torch.float16) -> List[Line]:
    """Per distillation loss: finite and float32 under autocast, and within
    ``AMP_TOLERANCE`` of its float32 value on the same batch."""
    values = amp_losses(model, batch, device, dtype)
    lines = []
    for name, v in values.items():
        diff = abs(v['amp'] - v['float32']) / max(abs(v['float32']), 1e-12)
        text = (f"{v['amp']:.4g} under {str(dtype)[6:]} autocast vs {v['float32']:.4g} "
                f"float32 (relative difference {diff:.2g}); result in {v['amp_dtype']}")
        data = dict(v, relative_difference=diff)
        if not torch.isfinite(torch.tensor(v['amp'])):
            lines.append(Line(f'amp {name}', 'FAIL', text, 'not finite under AMP: compute '
                              'this loss in float32', data))
        elif diff > AMP_TOLERANCE or v['amp_dtype'] != 'float32':
            lines.append(Line(f'amp {name}', 'WARN', text, 'cast this loss\'s inputs to '
                              'float32 before reducing them', data))
        else:
            lines.append(Line(f'amp {name}', 'OK', text, data=data))
    return lines


def memory_limit_bytes(device: str) -> Tuple[int, str]:
    """(bytes, what they are): the CUDA device's memory, or the machine's (MemTotal)."""
    if device.startswith('cuda'):
        return torch.cuda.get_device_properties(device).total_memory, 'device memory'
    with open('/proc/meminfo') as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemTotal'))
    return total, 'machine memory'


def check_steps(cfg, model: nn.Module, batches: Sequence[Batch], device: str,
                amp: bool, clock: str = 'wall') -> List[Line]:
    """Real training steps of the distiller, the student alone and the teacher alone
    (interleaved, with the config's optimizer and learning rate): every loss finite, time
    per step (``clock``: 'wall', or 'cpu' for the process's CPU time; median after the
    first step), images/s, c / (a + b), peak memory per phase."""
    phases = PhaseSteps(cfg, model, device, amp, log_losses=True)
    times = phases.time(batches, warmup=1 if len(batches) > 1 else 0, clock=clock)
    peak = phases.peak_mib(batches[0])
    images = len(batches[0][1])
    median = {phase: statistics.median(values) for phase, values in times.items()}
    lines = []
    for phase in PHASES:
        text = (f'{len(batches)} iterations; {median[phase]:.3g} s/iter ({clock} time), '
                f'{images / median[phase]:.3g} images/s, peak {peak[phase]:.0f} MiB')
        # the logs also hold the peak-memory step (on the first batch again): checked too
        logs = phases.logs.get(phase, [])
        data = dict(times=times[phase], median=median[phase], images_per_s=images /
                    median[phase], peak_mib=peak[phase], losses=logs[:len(batches)])
        bad = [(i, k) for i, log in enumerate(logs)
               for k, v in log.items() if not torch.isfinite(torch.tensor(v))]
        if bad:
            i, k = bad[0]
            lines.append(Line(f'steps {phase}', 'FAIL', f'{text}; {k} not finite at '
                              f'iteration {i}', 'lower the learning rate or this loss\'s '
                              'weight', data))
        else:
            lines.append(Line(f'steps {phase}', 'OK', text + ('; every loss finite'
                              if phase != 'teacher' else ''), data=data))
    ratio = median['distill'] / (median['student'] + median['teacher'])
    mem_ratio = peak['distill'] / (peak['student'] + peak['teacher'])
    lines.append(Line('overhead', 'OK', f'c / (a + b) = {ratio:.3f} (time), '
                      f'{mem_ratio:.3f} (peak memory)', data=dict(ratio=ratio,
                                                                  memory_ratio=mem_ratio)))
    limit, what = memory_limit_bytes(device)
    used = peak['distill'] * 2**20
    text = f'distill peak {peak["distill"]:.0f} MiB of {limit / 2**30:.1f} GiB {what}'
    status = 'WARN' if used > MEMORY_WARN_FRACTION * limit else 'OK'
    lines.append(Line('memory', status, text, 'lower train_dataloader.batch_size or train '
                      'with --amp' if status == 'WARN' else '',
                      dict(peak_mib=peak['distill'], limit_bytes=limit)))
    return lines
