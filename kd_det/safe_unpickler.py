"""A ``pickle_module`` for ``torch.load`` that unpickles only allow-listed globals.

torch < 2.6 cannot be told which extra types its ``weights_only`` unpickler may
rebuild (``torch.serialization.add_safe_globals`` and its ``(callable, name)``
entries came later), and mmengine's checkpoints need a few (its
``HistoryBuffer``, numpy arrays). On those versions kd_det loads with
``torch.load(f, pickle_module=kd_det.safe_unpickler)``: pickle's own unpickler
whose ``find_class`` returns only what :data:`ALLOWED` holds, keyed by the
``module.name`` a pickle asks for. Anything else raises
``pickle.UnpicklingError`` before it is imported, let alone called.

torch's ``UnpicklerWrapper`` subclasses :class:`Unpickler` and resolves
``torch.*Storage`` names itself; tensors arrive through its
``persistent_load``. What is allowed by default is torch's own
``weights_only`` list (:func:`torch._weights_only_unpickler._get_allowed_globals`);
kd_det adds mmengine's types through :func:`allow`.
"""
import _compat_pickle
import codecs
import collections
import pickle
from typing import Any, Dict, Iterable, Tuple, Union

import torch
from torch._weights_only_unpickler import _get_allowed_globals

#: ``'module.name'`` -> the object a pickle may refer to by that name: this torch's own
#: ``weights_only`` list, plus the plain types newer torch (2.13) allows by default, which
#: pickles of ordinary data use (``_codecs.encode`` rebuilds every ``bytes`` in protocol 2,
#: e.g. a numpy array's data).
ALLOWED: Dict[str, Any] = {
    **_get_allowed_globals(),
    '_codecs.encode': codecs.encode, 'builtins.set': set,
    'builtins.bytearray': bytearray, 'builtins.complex': complex,
    'collections.Counter': collections.Counter, 'torch.device': torch.device}

Entry = Union[Any, Tuple[Any, str]]


def allow(entries: Iterable[Entry]) -> None:
    """Allow-list ``entries``: objects (named by their ``__module__.__qualname__``)
    or ``(object, 'module.name')`` pairs that bind a pickled name to an object."""
    for entry in entries:
        if isinstance(entry, tuple):
            obj, name = entry
        else:
            obj, name = entry, f'{entry.__module__}.{entry.__qualname__}'
        ALLOWED[name] = obj


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals from :data:`ALLOWED` only."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names, which protocol 2 (torch.save's) writes: __builtin__, copy_reg, ...
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED[f'{module}.{name}']
        except KeyError:
            raise pickle.UnpicklingError(
                f'Unsupported global: {module}.{name} is not an allowed global') from None


def load(file, **kwargs) -> Any:
    """``pickle.load`` through :class:`Unpickler` (torch reads legacy headers with it)."""
    return Unpickler(file, **kwargs).load()
