"""The streaming engine under the :class:`~bsmamba2.separation.Separator`: a stream cut into
cross-faded segments, run through a model a batch at a time, overlap-added back.

No files, no resampling, no progress display: (channels, n) blocks at the model's rate go in
(:meth:`SegmentStream.feed`, :meth:`SegmentStream.finish`), the separated samples that are
final so far come out, in order, as (rows, n) arrays (rows = stems × channels). The parts:

- the model callable, any ``run(segments) -> results`` mapping a list of (channels, S)
  segments to a (B, ..., S) array, or to :class:`Results` still on their way from the
  device; :class:`SegmentModel` is a BSMamba2's (STFT, model, iSTFT, the test-time
  augmentation views, ``torch.compile`` with its eager fallback). On CUDA it returns before
  the kernels are done: the stream queues each batch as soon as its segments are cut and adds
  the results of earlier ones once they are back (:data:`AHEAD`);
- the chunk plan, a :class:`~bsmamba2.separation.chunking.Chunking`, and the delays of the
  ``--shifts`` passes (each pass its own :class:`~bsmamba2.separation.chunking.Chunker`, fed
  its delay in zeros first; the outputs wait in a :class:`Fifo` per pass, the delay dropped
  again, until every pass has them, and are averaged);
- the batch size policy, :class:`BatchSize`: segments per call, halved when the device runs
  out of memory (the failed batch is run again, so the result does not change);
- the compile decision, :class:`AutoCompile`: ``compile="auto"`` times the first batch and
  compiles for the rest of the input when that saves time.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from bsmamba2.device import autocast, current_gpu, fft_device
from bsmamba2.errors import BSMamba2Error
from bsmamba2.model import stft
from bsmamba2.separation.batching import smaller_batch
from bsmamba2.separation.chunking import Chunker, Chunking
from bsmamba2.separation.compiling import (
    compile_blocks,
    compile_pays,
    is_warm,
    mark_warm,
    quiet_compiler,
    uncompile_blocks,
)
from bsmamba2.separation.graphs import CudaGraphs
from bsmamba2.separation.inverse import istft

SegmentRunner = Callable[[list[np.ndarray]], "np.ndarray | Results"]
"""The model callable: a list of B (channels, S) segments → a (B, ..., S) array of results,
or a :class:`Results` whose ``result()`` gives that array later (the model still running)."""


AHEAD = 3
"""Batches queued on the device before the host waits for the oldest one's results. Below it
the host never waits: it cuts and queues each batch as soon as its segments are read, and adds
the results that are there in between, so a batch is never held back behind another's
results. The bound keeps a long input from being read, and its segments and results held,
all at once: a batch in flight holds its input and output (about 11 MB each for 4 stereo
segments of 8 s), its activations go back to the pool when the next batch runs."""


class NonFiniteOutputError(BSMamba2Error):
    """The model gave NaN or infinite samples: nothing is written for that input."""


class Fifo:
    """Samples waiting for their counterpart, first in first out: (rows, n) blocks pushed, any
    number of samples popped (the mixture waits for the separated stems, a pass for the others).
    The blocks are kept as they came (no copy on push: pushing is constant time however much
    waits, e.g. a whole input's mixture until its only batch is done)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self._blocks: deque[np.ndarray] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, block: np.ndarray) -> None:
        """Append ``block`` (any shape with ``rows`` × n elements, n last), not copied."""
        if block.shape[-1]:
            flat = block.reshape(self.rows, -1)
            self._blocks.append(flat)
            self._size += flat.shape[1]

    def pop(self, n: int) -> np.ndarray:
        """The oldest ``n`` samples (fewer if fewer are there)."""
        parts, need = [], min(n, self._size)
        self._size -= need
        while need:
            head = self._blocks[0]
            if head.shape[1] <= need:
                parts.append(self._blocks.popleft())
            else:
                parts.append(head[:, :need])
                self._blocks[0] = head[:, need:]
            need -= parts[-1].shape[1]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.rows, 0), np.float32)


class Results:
    """A batch's results on their way to the host (:meth:`SegmentModel.submit`): each view's
    (B, n_stems, C, S) audio and whether all of it is finite, copied on CUDA into pinned host
    memory behind the model's kernels (no wait); :meth:`result` waits for the copies.

    A non-finite output is never written: :meth:`result` raises :class:`NonFiniteOutputError`
    (the file fails, its outputs are removed). Several views (``tta``) are averaged on the
    host, in float32, in the order given.
    """

    def __init__(self, views: list[torch.Tensor], hint: str = "") -> None:
        self.hint = hint
        with torch.inference_mode():
            finite = torch.stack([torch.isfinite(v).all() for v in views]).all()
            if views[0].device.type != "cuda":
                self._host, self._finite, self._copied = [v.cpu() for v in views], finite, None
                return
            self._host = [torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for v in views]
            for host, view in zip(self._host, views, strict=True):
                host.copy_(view, non_blocking=True)
            self._finite = torch.empty((), dtype=torch.bool, pin_memory=True)
            self._finite.copy_(finite, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record(torch.cuda.current_stream(views[0].device))  # its GPU, not the current one

    def ready(self) -> bool:
        """Whether :meth:`result` would return without waiting for the device."""
        return self._copied is None or self._copied.query()

    def result(self) -> np.ndarray:
        """(B, n_stems, C, S) float32 on the host, once the copies are done."""
        if self._copied is not None:
            self._copied.synchronize()
        if not bool(self._finite):
            raise NonFiniteOutputError(f"the model's output has NaN or infinite values{self.hint}")
        views = [v.numpy() for v in self._host]
        return views[0] if len(views) == 1 else (sum(views) / len(views)).astype(np.float32)


class SegmentModel:
    """A BSMamba2 (or a module with its interface) as the engine's model callable: (C, S)
    segments in, (B, n_stems, C, S) separated audio out, C the input's channels whatever the
    model's (dual mono into a stereo model, channel by channel through a mono one).

    Args:
        model: on ``device``, in eval mode.
        device: where the model runs (the STFT runs there too, except on MPS).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        tta: also run every segment with its polarity inverted and (stereo) its channels
            swapped, turn each output back and average.
        cuda_graphs: on CUDA, replay the model's forward as a CUDA graph for the batch shape
            that repeats (:class:`~bsmamba2.separation.graphs.CudaGraphs`, the same output);
            ignored elsewhere.

    :attr:`compiled` says whether the Mamba modules run through ``torch.compile``; a compile
    that fails at the first call falls back to eager with a warning (and stays eager). Each
    input shape a compiled model ran is marked in the compile cache (:func:`mark_warm`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        precision: str,
        tta: bool = False,
        cuda_graphs: bool = True,
    ) -> None:
        self.model, self.device, self.precision, self.tta = model, device, precision, tta
        self.config = model.config
        self.compiled = False
        self.graphs = CudaGraphs(model) if cuda_graphs and device.type == "cuda" else None
        """The model's forward recorded for the repeating batch shape (:mod:`.graphs`), on CUDA only."""
        self.shapes: set[tuple[int, ...]] = set()
        """The spectrogram shapes the model ran on so far."""
        self._marked: set[tuple[int, ...]] = set()

    def compile_is_warm(self) -> bool:
        """Whether inductor's cache holds a compile for every input shape run so far (:func:`is_warm`)."""
        return bool(self.shapes) and all(is_warm(self.model, s, self.precision) for s in self.shapes)

    def compile(self) -> None:
        """Compile the model's Mamba modules (CPU only, see :func:`compile_blocks`)."""
        compile_blocks(self.model, self.device)
        self.compiled = True

    def __call__(self, segments: list[np.ndarray]) -> np.ndarray:
        """(B, C, S) audio → (B, n_stems, C, S); with ``tta`` the average over the views."""
        return self.submit(segments).result()

    def submit(self, segments: list[np.ndarray]) -> Results:
        """Start the model on a batch: on CUDA the kernels and the copy of the results back
        to the host are queued and this returns at once (the host meanwhile cuts, adds and
        writes); :meth:`Results.result` waits for them."""
        with current_gpu(self.device):
            audio = self._to_device(segments)
            views = [self._view(audio)]
            if self.tta:
                views.append(-self._view(-audio))
                if audio.shape[1] == 2 and self.config.channels == 2:  # a mono model: channel by channel
                    views.append(self._view(audio.flip(1)).flip(2))
            hint = " (fp16 overflows: try --precision bf16 or fp32)" if self.precision == "fp16" else ""
            return Results(views, hint)

    def _to_device(self, segments: list[np.ndarray]) -> torch.Tensor:
        """The (B, C, S) batch where the STFT runs; to CUDA through pinned memory, without
        waiting (a copy from pageable memory would wait for the kernels queued before it)."""
        where = fft_device(self.device)
        if where.type != "cuda":
            return torch.from_numpy(np.stack(segments)).to(where)
        staged = torch.empty((len(segments), *segments[0].shape), dtype=torch.float32, pin_memory=True)
        np.stack(segments, out=staged.numpy())
        return staged.to(where, non_blocking=True)

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        """The model on (B, C, S) audio: (B, n_stems, C, S) float32, where the STFT runs."""
        batch, channels, samples = x.shape
        model_channels = self.config.channels
        if model_channels == channels:
            inp = x
        elif model_channels == 2:  # mono input, stereo model: dual mono
            inp = x.expand(batch, 2, samples)
        else:  # mono model: every channel on its own
            inp = x.reshape(batch * channels, 1, samples)
        with torch.inference_mode():
            spec = stft(inp, self.config).to(self.device)
            with autocast(self.precision, self.device):
                out = self._forward(spec)
            out = out.to(x.device, torch.complex64)
            wav = istft(out, self.config, length=samples)  # (B', stems, Cm, S)
            if model_channels != channels:  # back to the input's channels
                wav = (
                    wav.mean(dim=2, keepdim=True)
                    if channels == 1
                    else wav.reshape(batch, channels, -1, samples).transpose(1, 2)
                )
            return wav.float()

    def _forward(self, spec: torch.Tensor) -> torch.Tensor:
        """The model on ``spec``; a compile that fails on this machine falls back to eager."""
        shape = tuple(spec.shape)
        self.shapes.add(shape)
        if not self.compiled:
            return self.model(spec) if self.graphs is None else self.graphs(spec)
        try:
            with quiet_compiler():
                out = self.model(spec)
            if shape not in self._marked:
                mark_warm(self.model, shape, self.precision)
                self._marked.add(shape)
            return out
        except Exception as exc:  # inductor's failures have many types; eager is always there
            self.compiled = False
            uncompile_blocks(self.model)
            while (inner := getattr(exc, "inner_exception", None) or exc.__cause__) is not None:
                exc = inner  # torch wraps the compiler's own error
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            warnings.warn(f"torch.compile failed ({reason}): continuing without compiling", stacklevel=2)
            return self.model(spec)


def _ready(results: np.ndarray | Results) -> bool:
    """Whether a batch's results can be taken without waiting: an array, or an object whose
    ``ready()`` says so (one without it is taken only when :data:`AHEAD` forces it)."""
    ready = getattr(results, "ready", None)
    return isinstance(results, np.ndarray) or (ready is not None and ready())


class BatchSize:
    """Segments per model call, halved (with a warning) each time the device runs out of memory,
    down to one segment, where it is a clear error (:func:`smaller_batch`). One policy object
    can serve many streams: what it learnt about the device stays."""

    def __init__(self, size: int, segment_seconds: float, device: torch.device) -> None:
        self.size, self.segment_seconds, self.device = size, segment_seconds, device

    def shrink(self) -> None:
        """After an out-of-memory error: half the batch, or an error at one segment."""
        old = self.size
        self.size = smaller_batch(old, self.segment_seconds)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        warnings.warn(
            f"out of GPU memory with {old} segments per pass: continuing with {self.size}", stacklevel=2
        )


class AutoCompile:
    """``compile="auto"`` for one input: after its first batch, compile for the rest when the
    eager time that the rest would take saves more than the compile costs (:func:`compile_pays`).

    Args:
        total_segments: the segments of every pass over the input; None for an input of
            unknown length, which stays eager.
        compile: compiles; gets the eager seconds the rest would have taken.
        warm: after the first batch, whether the compile cache holds this compile already.
    """

    def __init__(
        self,
        total_segments: int | None,
        compile: Callable[[float], None],
        warm: Callable[[], bool] = lambda: False,
    ) -> None:
        self.total_segments, self.compile, self.warm = total_segments, compile, warm

    def decide(self, per_segment: float, done: int) -> bool:
        """After ``done`` segments took ``per_segment`` seconds each: compile (True) or not."""
        if self.total_segments is None:
            return False
        eager = per_segment * max(0.0, self.total_segments - done)
        if not compile_pays(eager, self.warm()):
            return False
        self.compile(eager)
        return True


class SegmentStream:
    """One input through the model, block by block (see the module docstring).

    Args:
        run: the model callable (:data:`SegmentRunner`).
        chunking: segment length, hop and edge padding.
        channels: of the input blocks.
        rows: of each segment's result, flattened (stems × channels).
        batch: the batch size policy.
        shifts: the delay of each pass over the input in samples (``(0,)``: one plain pass).
        auto_compile: the compile decision, taken once after the first batch (None: none).
    """

    def __init__(
        self,
        run: SegmentRunner,
        chunking: Chunking,
        channels: int,
        rows: int,
        batch: BatchSize,
        shifts: Sequence[int] = (0,),
        auto_compile: AutoCompile | None = None,
    ) -> None:
        self.run, self.rows, self.batch, self.auto_compile = run, rows, batch, auto_compile
        self.chunkers = [Chunker(chunking.segment, chunking.hop, chunking.pad, channels) for _ in shifts]
        self.passes = [Fifo(rows) for _ in shifts]
        self.lead = list(shifts)  # samples still to drop from each pass's output
        self.pending: list[tuple[int, np.ndarray]] = []  # (pass, segment) waiting for a batch
        self.flight: deque[tuple[list[tuple[int, np.ndarray]], np.ndarray | Results]] = deque()
        self.submitted = 0
        """Batches started so far."""
        for k, chunker in enumerate(self.chunkers):
            self.pending += [(k, s) for s in chunker.feed(np.zeros((channels, self.lead[k]), np.float32))]

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Take (channels, n) samples; returns the (rows, m) separated samples now final."""
        self.pending += [(k, s) for k, chunker in enumerate(self.chunkers) for s in chunker.feed(block)]
        return self._process(last=False)

    def finish(self) -> np.ndarray:
        """The end of the input: the remaining separated samples (:meth:`end`, then :meth:`drain`)."""
        done = self.end()
        return np.concatenate([done, *self.drain()], axis=1)

    def end(self) -> np.ndarray:
        """The end of the input: every segment left is started; returns the samples final so far.
        The last batches may still be running: :meth:`drain` adds them (meanwhile the caller
        may start the next input's first batch, which then queues behind them)."""
        self.pending += [(k, s) for k, chunker in enumerate(self.chunkers) for s in chunker.finish()]
        return self._process(last=True)

    def drain(self) -> Iterator[np.ndarray]:
        """After :meth:`end`: each batch still in flight added in turn (waiting for it), and
        the separated samples final after each of its segments, so the caller writes them
        while the next batch runs, and after the last batch while its next segment is added
        (only the last segment's samples are left to write when the model is done)."""
        while self.flight:
            for _ in self._add_oldest():
                yield self._final()

    def _final(self) -> np.ndarray:
        """The samples every pass has, averaged over the passes."""
        n = min(len(p) for p in self.passes)
        if len(self.passes) == 1:  # the sum's ``0 +`` in one pass (it turns -0.0 into 0.0), no ``/ 1``
            return self.passes[0].pop(n) + np.float32(0)
        return sum(p.pop(n) for p in self.passes) / len(self.passes)

    def _process(self, last: bool) -> np.ndarray:
        """Start the full batches (every pending segment when ``last``); the samples every pass has.

        Each batch is started as soon as its segments are there; results are added when they
        are back, and waited for only when :data:`AHEAD` batches are in flight, so on a GPU
        the host cuts, adds and hands out while the model runs the batches queued."""
        while self.pending and (len(self.pending) >= self.batch.size or last):
            batch = self.pending[: self.batch.size]
            start = time.perf_counter()
            try:
                results = self.run([segment for _, segment in batch])
            except torch.OutOfMemoryError:
                self.batch.shrink()
                continue
            del self.pending[: len(batch)]
            self.submitted += 1
            self.flight.append((batch, results))
            if self.auto_compile is not None:  # decided once, from the first batch's eager time
                decision, self.auto_compile = self.auto_compile, None
                self._add_all()
                decision.decide((time.perf_counter() - start) / len(batch), len(batch))
            while len(self.flight) > AHEAD:
                self._add_all()
        while self.flight and _ready(self.flight[0][1]):
            self._add_all()
        return self._final()

    def _add_oldest(self) -> Iterator[None]:
        """Overlap-add the results of the oldest batch in flight (waiting for them if need be),
        pausing after each segment (:meth:`drain` hands out what is final there); the batch
        leaves the flight at once, so every caller must exhaust it (:meth:`_add_all`)."""
        batch, results = self.flight.popleft()
        if not isinstance(results, np.ndarray):
            results = results.result()
        for (k, _), result in zip(batch, results, strict=True):
            done = self.chunkers[k].add(result).reshape(self.rows, -1)
            drop = min(self.lead[k], done.shape[1])
            self.lead[k] -= drop
            self.passes[k].push(done[:, drop:])
            yield

    def _add_all(self) -> None:
        """:meth:`_add_oldest` without pauses."""
        for _ in self._add_oldest():
            pass
