"""The sequence mixers a bidirectional block can run, chosen by name (``BSMamba2Config.mixer``).

A mixer is an ``nn.Module`` mapping (batch, length, dim) to the same shape, built with
keywords: ``d_model`` plus its own options, each with a default. Those defaults are the
config's when the user sets nothing, so a mixer's options live with it. Options that several
mixers share by name (:data:`SHARED_OPTIONS`: ``expand``, ``d_state``, ...) are fields of
:class:`~bsmamba2.model.config.BSMamba2Config` (``None`` there: the mixer's default); any
other option goes in ``BSMamba2Config.mixer_options``. Both reach YAML (``model:``), the
training CLI (``--model.net.d_state 16``, ``--model.net.mixer_options '{dt_rank: 8}'``) and
our checkpoints' metadata, resolved.

How to add a mixer (say Mamba-1, ``"mamba1"``):

1. ``model/mamba1.py``: the module. Its ``__init__(self, d_model, *, d_state=16, ...)``
   keywords are its options and defaults. It has a ``recompute`` attribute (one of
   :data:`RECOMPUTE_MODES`, see :func:`set_recompute`) that its ``forward`` honours by
   calling :func:`bsmamba2.model.recompute.checkpointed`, and a staticmethod
   ``infer_options(state, d_model, ngroups) -> dict | None``: its options from its own
   state-dict tensors (keys relative to the mixer, e.g. ``"in_proj.weight"``), or None when
   the keys are not its own (that is how :func:`infer_mixer` tells mixers apart). And a method
   ``activation_width() -> int``: the elements per token of the widest activation its forward
   allocates (the separator's memory estimate, ``separation/batching.py``, scales it).
2. One line in :data:`MIXERS`.
3. Tests in ``tests/model/``: against a float64 reference, and a checkpoint round trip
   (``save_model`` / ``load_model`` with and without the stored config); its row in
   ``tests/separation/test_batching.py`` measures the widest activation.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from bsmamba2.model.mamba1 import Mamba1Mixer
from bsmamba2.model.mamba2 import Mamba2
from bsmamba2.model.mamba3 import Mamba3Mixer
from bsmamba2.model.recompute import RECOMPUTE_MODES

MIXERS: dict[str, type[nn.Module]] = {
    "mamba2": Mamba2,
    "mamba3": Mamba3Mixer,
    "mamba": Mamba1Mixer,  # Mamba-1, the official code's module_type "mamba"
}
#: Options several mixers share by name: they are BSMamba2Config fields.
SHARED_OPTIONS = ("expand", "headdim", "d_state", "ngroups", "d_conv")


def mixer_class(name: str) -> type[nn.Module]:
    """The mixer registered as ``name``."""
    try:
        return MIXERS[name]
    except KeyError:
        raise ValueError(f"unknown mixer {name!r}: expected one of {', '.join(MIXERS)}") from None


def mixer_defaults(name: str) -> dict[str, Any]:
    """Every option of mixer ``name`` with its default (its constructor's keywords)."""
    params = list(inspect.signature(mixer_class(name).__init__).parameters.values())[2:]  # self, d_model
    return {p.name: p.default for p in params}


def build_mixer(name: str, d_model: int, options: Mapping[str, Any]) -> nn.Module:
    """Mixer ``name`` for width ``d_model`` with ``options`` (see ``BSMamba2Config.mixer_kwargs``)."""
    return mixer_class(name)(d_model, **options)


def mixer_activation_width(name: str, d_model: int, options: Mapping[str, Any]) -> int:
    """:meth:`activation_width` of mixer ``name`` with these options, from its own shapes: one
    mixer built on the CPU (a few MB, milliseconds). Not on the meta device: there its
    initialisation runs through Python decompositions whose first call imports
    ``torch._dynamo`` (seconds, at every start of the command)."""
    with torch.device("cpu"):
        return build_mixer(name, d_model, options).activation_width()


def infer_mixer(
    state: Mapping[str, torch.Tensor], d_model: int, ngroups: int = 1
) -> tuple[str, dict[str, Any]]:
    """The mixer whose weights ``state`` holds (keys relative to the mixer) and its options.

    ``ngroups`` is what the tensors cannot show (the head groups sharing B and C). Raises
    ValueError when no mixer claims the keys.
    """
    for name, cls in MIXERS.items():
        options = cls.infer_options(state, d_model, ngroups)
        if options is not None:
            return name, options
    raise ValueError(f"no known mixer has the parameters {', '.join(sorted(state))}")


def set_recompute(model: nn.Module, mode: str) -> None:
    """Recompute every mixer of ``model`` in the backward pass (``mixer``), all of it but its
    costly calls (``cheap``), or nothing (``none``); :mod:`bsmamba2.model.recompute`.

    ``mixer`` keeps only each mixer's input for the backward instead of its activations
    (in_proj's output, the conv output, the scan and norm outputs) and runs the mixer's
    forward again there. ``cheap`` keeps the SSD scan's output y of a Mamba-2 mixer as well
    and recomputes the rest (in_proj, conv, gated norm): the scan's forward is the costliest
    part to recompute per byte it frees (the other mixers mark no costly call: for them it is
    ``mixer``). Paper model, batch 5 × 8 s, bf16, H200: each mixer keeps 0.13 GB (``mixer``),
    0.64 GB (``cheap``) or 2.93 GB (``none``), and its recompute costs 2.2 or 1.4 ms a step
    (docs/benchmarks.md, issue 19). Only training memory and time change: results and
    gradients stay the same, and nothing changes without gradients (inference).
    """
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"recompute={mode!r}: expected one of {', '.join(RECOMPUTE_MODES)}")
    for module in model.modules():
        if isinstance(module, tuple(MIXERS.values())):
            module.recompute = mode
