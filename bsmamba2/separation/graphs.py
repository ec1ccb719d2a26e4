"""The model's forward pass on CUDA replayed as a CUDA graph, for the batch shape that repeats.

A separation sends the same shape through the model again and again (every full batch of
segments), and each forward is ~650 kernel launches driven from Python: on a busy host (the
reading and writing threads hold the GIL in turns) the launches can fall behind the GPU.
A CUDA graph records the launches of one forward once and replays them with one call.

The first batch of a shape runs eagerly (it also compiles and, where the table of known
configurations has none, autotunes the Triton kernels: nothing of that may happen while a
graph is recorded); the second is recorded and replayed, and every later one replays. One
graph at most (:data:`MAX_GRAPHS`): the first shape seen twice, in a separation the full
batch; every other shape (a file's last, shorter batch) stays eager. A graph keeps its own
memory for the forward's intermediates, about as much as the eager forward of that batch
needs at its peak, beside the eager pool (``torch.cuda.max_memory_allocated`` does not show
it: the graph's blocks are reserved, not allocated, between replays); one graph bounds that. A
replay runs the same kernels with the same launch settings on the same addresses as the
recorded forward: the output is the eager one's, bit for bit (tests/separation/test_graphs.py).
The graph's output tensor is its own and is overwritten by the next replay: the caller uses
it before queueing another (the engine's STFT, iSTFT and copies are queued on the same
stream, so they run before the next replay in any case). A recording that fails (an op that
synchronises, a model other than ours) turns the graphs off with a warning: eager is always
there. On the CPU nothing here is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

Key = tuple[tuple[int, ...], torch.dtype, torch.device]

MAX_GRAPHS = 1
"""Graphs kept: each holds the memory of a whole forward of its batch."""


class CudaGraphs:
    """``forward`` (a tensor in, a tensor out, always the same kernels for the same shape) as
    a CUDA graph of the first input shape called twice; other shapes eager."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.forward = forward
        self.enabled = True
        self._seen: set[Key] = set()
        self._graphs: dict[Key, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The input shapes recorded so far."""
        return [key[0] for key in self._graphs]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)``: replayed when this shape was recorded, recorded at its second call."""
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            if not self.enabled or key not in self._seen or len(self._graphs) >= MAX_GRAPHS:
                self._seen.add(key)
                return self.forward(x)
            entry = self._record(x, key)
            if entry is None:
                return self.forward(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _record(self, x: torch.Tensor, key: Key) -> tuple | None:
        """Record ``forward`` on a copy of ``x``; None (and the graphs off) if it cannot be."""
        static_in = x.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the reading and writing threads may use CUDA-free calls meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.forward(static_in)
        except Exception as exc:  # an op that cannot be recorded: eager from here on
            self.enabled = False
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            warnings.warn(f"CUDA graph recording failed ({reason}): continuing without", stacklevel=3)
            return None
        self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]
