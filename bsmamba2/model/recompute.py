"""Activation recompute of a mixer's forward in the backward pass, whole or but its costly calls.

A mixer's ``recompute`` attribute is one of :data:`RECOMPUTE_MODES` (set by
:func:`bsmamba2.model.mixers.set_recompute`) and its ``forward`` calls
:func:`checkpointed` with it:

* ``none``: autograd keeps every activation the mixer's ops save for their backward.
* ``mixer``: only the mixer's input is kept; the backward runs the whole forward again.
* ``cheap``: as ``mixer``, but the outputs of the calls the mixer marks as costly to
  recompute (:func:`costly`; Mamba-2 marks its SSD scan) are kept as well and handed back
  to those calls in the recompute, which then do not compute them again. What is recomputed
  is then what is cheap per byte it spares: matrix products and element-wise passes.

How ``cheap`` works: :func:`torch.utils.checkpoint.checkpoint` (non-reentrant) takes two
context managers, one around the forward and one around each recompute. Here they make
:func:`costly` record its call's output in the forward (a detached reference: it is the
tensor autograd would have saved anyway) and hand it back in the recompute, where the call
records its backward on the recomputed inputs without running its kernel (the SSD scan's
``out``). A second recompute of the same forward (``retain_graph``) finds nothing recorded
and computes again. Results and gradients are those of ``none``: every recomputed value is
the same computation on the same inputs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType

import torch
from torch.utils.checkpoint import checkpoint

RECOMPUTE_MODES = ("none", "mixer", "cheap")

#: The costly outputs of the checkpointed forward running now, and whether it is the recompute.
_running: ContextVar[tuple[deque[torch.Tensor], bool] | None] = ContextVar("bsmamba2_recompute", default=None)


class _Phase:
    """Marks the forward (``replay`` False) or a recompute (True) of one checkpointed call;
    entered once per recompute, so a class (a generator context manager enters only once)."""

    def __init__(self, kept: deque[torch.Tensor], replay: bool) -> None:
        self.kept, self.replay = kept, replay
        self._tokens: list = []

    def __enter__(self) -> None:
        self._tokens.append(_running.set((self.kept, self.replay)))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _running.reset(self._tokens.pop())


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor, mode: str) -> torch.Tensor:
    """``fn(u)`` with the activation policy ``mode`` (see the module docstring); without
    gradients (inference) always the plain call."""
    if mode == "none" or not torch.is_grad_enabled():
        return fn(u)
    if mode == "mixer":
        return checkpoint(fn, u, use_reentrant=False, preserve_rng_state=False)
    kept: deque[torch.Tensor] = deque()
    return checkpoint(fn, u, use_reentrant=False, preserve_rng_state=False,
                      context_fn=lambda: (_Phase(kept, False), _Phase(kept, True)))


def costly(call: Callable[[torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
    """``call(None)``, a computation whose output is kept for the recompute under ``cheap``:
    in such a forward its output is recorded, in the recompute ``call(recorded output)`` must
    record its backward without computing (calls are matched in their order). Without
    gradients, or while torch.compile traces (Dynamo cannot trace a ``ContextVar``), it is
    the plain call: nothing is recorded, and a recompute that finds nothing computes again."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return call(None)
    running = _running.get()
    if running is None:
        return call(None)
    kept, replay = running
    if replay:
        return call(kept.popleft() if kept else None)
    out = call(None)
    kept.append(out.detach())
    return out
