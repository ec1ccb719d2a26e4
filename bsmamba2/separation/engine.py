"""The streaming engine under the :class:`~bsmamba2.separation.Separator`: a stream cut into
cross-faded segments, run through a model a batch at a time, overlap-added back.

No files, no resampling, no progress display: (channels, n) blocks at the model's rate go in
(:meth:`SegmentStream.feed`, :meth:`SegmentStream.finish`), the separated samples that are
final so far come out, in order, as (rows, n) arrays (rows = stems × channels). The parts:

- the model callable, any ``run(segments) -> results`` mapping a list of (channels, S)
  segments to a (B, ..., S) array; :class:`SegmentModel` is a BSMamba2's (STFT, model,
  iSTFT, the test-time augmentation views, ``torch.compile`` with its eager fallback);
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
from collections.abc import Callable, Sequence

import numpy as np
import torch

from bsmamba2.device import autocast, fft_device
from bsmamba2.errors import BSMamba2Error
from bsmamba2.model import istft, stft
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

SegmentRunner = Callable[[list[np.ndarray]], np.ndarray]
"""The model callable: a list of B (channels, S) segments → a (B, ..., S) array of results."""


class NonFiniteOutputError(BSMamba2Error):
    """The model gave NaN or infinite samples: nothing is written for that input."""


class Fifo:
    """Samples waiting for their counterpart, first in first out: (rows, n) blocks pushed, any
    number of samples popped (the mixture waits for the separated stems, a pass for the others)."""

    def __init__(self, rows: int) -> None:
        self.data = np.zeros((rows, 0), np.float32)

    def __len__(self) -> int:
        return self.data.shape[1]

    def push(self, block: np.ndarray) -> None:
        """Append ``block`` (any shape with ``rows`` × n elements, n last)."""
        if block.shape[-1]:
            self.data = np.concatenate([self.data, block.reshape(self.data.shape[0], -1)], axis=1)

    def pop(self, n: int) -> np.ndarray:
        """The oldest ``n`` samples (fewer if fewer are there)."""
        out, self.data = self.data[:, :n], self.data[:, n:]
        return out


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

    :attr:`compiled` says whether the Mamba modules run through ``torch.compile``; a compile
    that fails at the first call falls back to eager with a warning (and stays eager). Each
    input shape a compiled model ran is marked in the compile cache (:func:`mark_warm`).
    """

    def __init__(
        self, model: torch.nn.Module, device: torch.device, precision: str, tta: bool = False
    ) -> None:
        self.model, self.device, self.precision, self.tta = model, device, precision, tta
        self.config = model.config
        self.compiled = False
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
        x = np.stack(segments)
        if not self.tta:
            return self._view(x)
        views = [self._view(x), -self._view(-x)]
        if x.shape[1] == 2 and self.config.channels == 2:  # a mono model takes channels one by one
            views.append(self._view(x[:, ::-1].copy())[:, :, ::-1])
        return (sum(views) / len(views)).astype(np.float32)

    def _view(self, audio: np.ndarray) -> np.ndarray:
        """The model on (B, C, S) audio: (B, n_stems, C, S)."""
        x = torch.from_numpy(audio).to(fft_device(self.device))
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
        if not torch.isfinite(wav).all():  # never written: the file fails, its outputs are removed
            hint = " (fp16 overflows: try --precision bf16 or fp32)" if self.precision == "fp16" else ""
            raise NonFiniteOutputError(f"the model's output has NaN or infinite values{hint}")
        return wav.float().cpu().numpy()

    def _forward(self, spec: torch.Tensor) -> torch.Tensor:
        """The model on ``spec``; a compile that fails on this machine falls back to eager."""
        shape = tuple(spec.shape)
        self.shapes.add(shape)
        if not self.compiled:
            return self.model(spec)
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
        for k, chunker in enumerate(self.chunkers):
            self.pending += [(k, s) for s in chunker.feed(np.zeros((channels, self.lead[k]), np.float32))]

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Take (channels, n) samples; returns the (rows, m) separated samples now final."""
        self.pending += [(k, s) for k, chunker in enumerate(self.chunkers) for s in chunker.feed(block)]
        return self._process(last=False)

    def finish(self) -> np.ndarray:
        """The end of the input: the remaining separated samples."""
        self.pending += [(k, s) for k, chunker in enumerate(self.chunkers) for s in chunker.finish()]
        return self._process(last=True)

    def _process(self, last: bool) -> np.ndarray:
        """Run the full batches (every pending segment when ``last``); the samples every pass has."""
        while self.pending and (len(self.pending) >= self.batch.size or last):
            batch = self.pending[: self.batch.size]
            start = time.perf_counter()
            try:
                results = self.run([segment for _, segment in batch])
            except torch.OutOfMemoryError:
                self.batch.shrink()
                continue
            if self.auto_compile is not None:  # decided once, from the first batch's eager time
                decision, self.auto_compile = self.auto_compile, None
                decision.decide((time.perf_counter() - start) / len(batch), len(batch))
            del self.pending[: len(batch)]
            for (k, _), result in zip(batch, results, strict=True):
                done = self.chunkers[k].add(result).reshape(self.rows, -1)
                drop = min(self.lead[k], done.shape[1])
                self.lead[k] -= drop
                self.passes[k].push(done[:, drop:])
        n = min(len(p) for p in self.passes)
        return sum(p.pop(n) for p in self.passes) / len(self.passes)
