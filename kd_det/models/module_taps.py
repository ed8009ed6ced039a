"""Tap points: the raw outputs of named modules as distillation levels (source ``'taps'``).

``taps=dict(student=[path, ...], teacher=[path, ...])`` on the distiller names modules
by their ``named_modules()`` path, e.g. ``'neck.out_convs.0.conv'`` (in mmdet's
CSPNeXtPAFPN the conv before BN and activation, MMYOLO's RTMDet tap point). Level
``i`` of the ``'taps'`` source is the output of the ``i``-th named module, recorded by
a forward hook: on the student during its own ``loss()`` (its code untouched), on the
teacher while its backbone (+ neck) runs. Student tap ``i`` pairs with teacher tap
``i`` (``level_pairs`` overrides this); there are no strides, so losses that need
them take them configured.

Taps lie in the backbone or the neck on both sides: the teacher runs only as far as
that, and each tapped module must run once per forward.
"""
import contextlib
import difflib
from typing import Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from .level_pairing import explicit_pairs

SIDES = ('student', 'teacher')
STAGES = ('backbone', 'neck')


class ModuleTaps:
    """The module paths of a ``taps`` option, checked against the built models.

    Holds paths, not modules: a copy of the distiller (mmengine's EMA deep-copies it)
    records from its own student. Raises at construction (``ValueError``) on a
    malformed option, a path that names no module (naming the nearest existing
    paths), or a path outside the backbone and neck.
    """

    def __init__(self, taps: dict, student: nn.Module, teacher: nn.Module) -> None:
        if not isinstance(taps, dict) or set(taps) != set(SIDES):
            raise ValueError(f'taps must be dict(student=[module path, ...], teacher=[module '
                             f'path, ...]), got {taps!r}')
        self.paths: Dict[str, List[str]] = {}
        self._widths: Dict[str, List[Optional[int]]] = {}
        for side, model in zip(SIDES, (student, teacher)):
            paths = taps[side]
            if isinstance(paths, str) or not isinstance(paths, (list, tuple)) or not paths \
                    or not all(isinstance(p, str) for p in paths):
                raise ValueError(f'taps[{side!r}] must be a non-empty list of module paths '
                                 f"(e.g. 'neck.out_convs.0.conv'), got {paths!r}")
            self.paths[side] = list(paths)
            self._widths[side] = [_out_channels(_find_module(model, side, path))
                                  for path in paths]

    @property
    def teacher_stages(self) -> set:
        """The teacher's top-level stages that hold a tap ('backbone', 'neck')."""
        return {path.split('.')[0] for path in self.paths['teacher']}

    def pairs(self, level_pairs: Optional[Sequence] = None) -> Tuple[Dict[int, int], str]:
        """``({student tap: teacher tap}, how)``: in order, or as ``level_pairs`` says."""
        num_s, num_t = len(self.paths['student']), len(self.paths['teacher'])
        if level_pairs is not None:
            return explicit_pairs(level_pairs, num_s, num_t), 'level_pairs'
        if num_s != num_t:
            raise ValueError(f'taps: {num_s} student and {num_t} teacher module paths; tap i '
                             'of the student pairs with tap i of the teacher, so give as many '
                             'on each side, or pair them with `level_pairs`')
        return {i: i for i in range(num_s)}, 'in tap order'

    def widths(self, side: str) -> List[Optional[int]]:
        """Output channels of each tapped module, where the module says (None otherwise)."""
        return list(self._widths[side])

    def record(self, side: str, model: nn.Module) -> 'TapRecorder':
        """A context manager recording the tapped outputs of ``model`` (the ``side``)."""
        paths = self.paths[side]
        return TapRecorder(side, paths, [model.get_submodule(p) for p in paths])


class TapRecorder:
    """Forward hooks on the tapped modules while in the ``with`` block; ``levels()``
    gives their outputs in tap order, each of which must have been produced once."""

    def __init__(self, side: str, paths: List[str], modules: List[nn.Module]) -> None:
        self.side, self.paths, self.modules = side, paths, modules
        self.outputs: List[List[Tensor]] = []
        self._handles: List = []

    def __enter__(self) -> 'TapRecorder':
        self.outputs = [[] for _ in self.modules]
        for outputs, module in zip(self.outputs, self.modules):
            self._handles.append(module.register_forward_hook(
                lambda m, args, out, store=outputs: store.append(out)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def levels(self) -> List[Tensor]:
        for path, outputs in zip(self.paths, self.outputs):
            if len(outputs) != 1:
                raise RuntimeError(f'the {self.side} tap {path!r} ran {len(outputs)} times in '
                                   'one forward; a tap must name a module that runs once')
            if not isinstance(outputs[0], Tensor) or outputs[0].dim() != 4:
                raise ValueError(f'the {self.side} tap {path!r} gives '
                                 f'{type(outputs[0]).__name__}, not an (N, C, H, W) tensor; '
                                 'tap a module whose output is a feature map')
        return [outputs[0] for outputs in self.outputs]


def build_taps(taps: Optional[dict], sources: set, student: nn.Module,
               teacher: nn.Module) -> Optional[ModuleTaps]:
    """The distiller's ``taps`` option checked; refused when source ``'taps'`` and the
    option do not come together."""
    if taps is None and 'taps' in sources:
        raise ValueError("a distillation loss reads source 'taps' (or feature_source='taps'), "
                         'but no taps are configured: give `taps=dict(student=[module path, '
                         "...], teacher=[...])`, e.g. 'neck.out_convs.0.conv'")
    if taps is not None and 'taps' not in sources:
        raise ValueError("`taps` are configured, but no distillation loss reads them: set "
                         "feature_source='taps' (the default source of every loss) or "
                         "source='taps' on the losses that should read them")
    return None if taps is None else ModuleTaps(taps, student, teacher)


def teacher_levels(teacher: nn.Module, inputs: Tensor, sources: set,
                   taps: Optional[ModuleTaps]) -> Dict[str, List[Tensor]]:
    """The teacher's 'backbone', 'neck' and 'taps' levels that ``sources`` read: its
    backbone runs, and its neck when a source other than the backbone needs it."""
    out: Dict[str, List[Tensor]] = {}
    recorder = taps.record('teacher', teacher) if 'taps' in sources else None
    with recorder if recorder is not None else contextlib.nullcontext():
        feats = teacher.backbone(inputs)
        if 'backbone' in sources:
            out['backbone'] = list(feats)
        tapped_neck = recorder is not None and 'neck' in taps.teacher_stages
        if sources - {'backbone', 'taps'} or tapped_neck:
            out['neck'] = list(teacher.neck(feats) if teacher.with_neck else feats)
    if recorder is not None:
        out['taps'] = recorder.levels()
    return out


def _find_module(model: nn.Module, side: str, path: str) -> nn.Module:
    names = [name for name, _ in model.named_modules() if name]
    if path not in names:
        near = difflib.get_close_matches(path, names, n=5, cutoff=0.6)
        hint = f'nearest names: {near}' if near else \
            f'no similar name; its top-level modules: {[n for n in names if "." not in n]}'
        raise ValueError(f'taps: the {side} {type(model).__name__} has no module {path!r}; '
                         f'{hint}')
    if path.split('.')[0] not in STAGES:
        raise ValueError(f'taps: {side} module {path!r} is outside the backbone and neck; '
                         f'taps must lie in {list(STAGES)} (the teacher runs only those)')
    return model.get_submodule(path)


def _out_channels(module: nn.Module) -> Optional[int]:
    for attr in ('out_channels', 'num_features'):  # convs (ConvModule too); norms
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None
