"""A restricted unpickler for PyTorch checkpoints: tensors load, no pickled code runs.

``torch.load(weights_only=True)`` refuses the official Lightning checkpoint (it carries an
OmegaConf object), and ``weights_only=False`` would run whatever the pickle names. This
module is handed to ``torch.load`` as its ``pickle_module``: torch keeps reading the zip
container and the tensor storages, while every global the pickle asks for goes through
:meth:`Unpickler.find_class`, which returns only a short allow-list of inert types and
tensor rebuilders; anything else becomes an :class:`Opaque` stand-in that records its
arguments and does nothing. ``find_class`` is the only way a pickle reaches callables
(GLOBAL, STACK_GLOBAL, INST, OBJ and EXT all go through it).
"""

from __future__ import annotations

import builtins
import collections
import pickle
import sys
from typing import Any

import torch

_ALLOWED_BUILTINS = {
    "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool",
    "str", "bytes", "bytearray", "slice", "range",
}  # fmt: skip
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}
_RENAMED_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class Opaque:
    """Inert stand-in for an object of a class that is not loaded; keeps what it was given."""

    pickled_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        """A stand-in used as a callable (``getattr(x, "f")(...)``) yields another stand-in."""
        return type(self)(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<opaque {self.pickled_name}>"


_stand_ins: dict[str, type[Opaque]] = {}


def stand_in(module: str, name: str) -> type[Opaque]:
    """The Opaque subclass standing for ``module.name`` (one per name)."""
    key = f"{module}.{name}"
    if key not in _stand_ins:
        _stand_ins[key] = type(name, (Opaque,), {"pickled_name": key, "__module__": __name__})
    return _stand_ins[key]


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class never imports or returns arbitrary callables."""

    def find_class(self, module: str, name: str) -> Any:
        module = _RENAMED_MODULES.get(module, module)
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return getattr(builtins, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return stand_in(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through the restricted :class:`Unpickler` (torch calls this too)."""
    return Unpickler(file, **kwargs).load()


def torch_load(path: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with this module as pickle module: tensors yes, code never."""
    this_module = sys.modules[__name__]
    return torch.load(path, map_location=map_location, pickle_module=this_module, weights_only=False)
