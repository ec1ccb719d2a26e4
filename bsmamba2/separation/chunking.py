"""Cutting a stream into overlapping segments and cross-fading the processed ones back.

The input is padded with ``pad`` zeros at both ends (the overlap, at most one hop) so the
first and last real samples sit in the flat middle of a segment, where the model sees
context on both sides, rather than in a fade. Capping the padding at one hop keeps a short
input from being cut into more segments than its length needs: with overlap 0.999, padding
by the whole overlap would turn 100 samples into a thousand 8 s segments.

Segments start every ``hop`` samples; each processed segment is weighted by a window that
ramps up over the overlap, stays at one, and ramps down, and the sum is divided by the
summed weights, so the weights at every sample add up to one exactly (no level change, no
seams), whatever the overlap. With no overlap and no padding this is the
official protocol: back-to-back segments, the last one zero-padded.

Only the samples that later segments can still touch are kept, so memory stays at a few
segments however long the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bsmamba2.errors import ParameterError

DEFAULT_SEGMENT = 8.0
"""Seconds per model call: the training length, and the official evaluation chunk."""
DEFAULT_OVERLAP = 0.25
"""The cross-faded fraction of a segment."""


def segment_count(samples: int, segment: int, hop: int, pad: int) -> int:
    """How many segments of ``segment`` samples every ``hop`` cover ``samples`` padded by ``pad``
    at both ends (the last one zero-padded to full length)."""
    return max(1, math.ceil((2 * pad + samples - segment) / hop) + 1)


@dataclass(frozen=True)
class Chunking:
    """Segment length, hop and edge padding in samples."""

    segment: int
    hop: int
    pad: int

    @classmethod
    def from_seconds(cls, segment: float, overlap: float, rate: int, window: int) -> Chunking:
        """``segment`` seconds at ``rate`` overlapping by the fraction ``overlap``; the segment must
        be longer than one STFT ``window`` and the hop at least one window (a shorter hop only
        multiplies the work). Errors name the parameter."""
        if not (math.isfinite(segment) and segment > window / rate):
            raise ParameterError(
                "segment",
                f"segment must be longer than {window / rate:.3f} s (one STFT window), got {segment}",
            )
        if not 0 <= overlap < 1:
            raise ParameterError("overlap", f"overlap must be in [0, 1), got {overlap}")
        samples = round(segment * rate)
        overlap_samples = min(round(overlap * samples), samples - 1)
        hop = samples - overlap_samples
        if hop < window:
            most = math.floor((1 - window / samples) * 1000) / 1000
            raise ParameterError(
                "overlap",
                f"overlap {overlap} leaves {hop} samples between {segment:g} s segments, less than one "
                f"STFT window ({window}): use an overlap of at most {most}"
            )
        return cls(samples, hop, min(overlap_samples, hop))

    def segments_for(self, samples: int) -> int:
        """How many segments an input of ``samples`` samples is cut into."""
        return segment_count(samples, self.segment, self.hop, self.pad)


def crossfade_window(segment: int, overlap: int) -> np.ndarray:
    """Linear ramps of ``overlap`` samples at both ends, ones between; never zero."""
    window = np.ones(segment, np.float32)
    if overlap:
        ramp = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap
        window[:overlap] = ramp
        window[-overlap:] = np.minimum(window[-overlap:], ramp[::-1])
    return window


class Chunker:
    """Streaming segmentation (``feed``/``finish`` give segments) and overlap-add (``add``).

    Segments come out in order as (channels, segment) arrays: views of the chunker's own
    buffer, which it never changes in place (not copied: do not change them). The processed
    results must be given back to :meth:`add` in the same order, as (k, segment) arrays (any
    leading shape: stems × channels), which returns the (k, n) samples that are final so
    far, with the padding removed and at most as many samples as were fed.
    """

    def __init__(self, segment: int, hop: int, pad: int, channels: int) -> None:
        if not 0 < hop <= segment:
            raise ValueError(f"hop {hop} must be in (0, segment={segment}]")
        self.segment, self.hop, self.pad = segment, hop, pad
        self.window = crossfade_window(segment, segment - hop)
        self._buffer = np.zeros((channels, pad), np.float32)  # starts at padded position _buf_pos
        self._buf_pos = 0
        self._waiting: list[np.ndarray] = []  # blocks fed after _buffer, joined once a segment is there
        self._waiting_len = 0
        self._next = 0  # padded position of the next segment to cut
        self._fed = 0
        self._finished = False
        self._acc = np.zeros((0, 0), np.float32)  # weighted sum, from padded position _out_pos
        self._wsum = np.zeros(0, np.float64)
        flat = segment - 2 * (segment - hop)  # where the window is one: no other segment's ramp there
        self._ones = (segment - hop, segment - hop + flat) if flat > 0 else (0, 0)
        self._out_pos = 0
        self._added = 0  # segments given back

    @property
    def fed(self) -> int:
        """Samples fed so far (the input length once finished)."""
        return self._fed

    def segments_for(self, samples: int) -> int:
        """How many segments an input of ``samples`` samples is cut into."""
        return segment_count(samples, self.segment, self.hop, self.pad)

    def _cut(self) -> list[np.ndarray]:
        if self._waiting:
            self._buffer = np.concatenate([self._buffer, *self._waiting], axis=1)
            self._waiting, self._waiting_len = [], 0
        out = []
        while self._next + self.segment <= self._buf_pos + self._buffer.shape[1]:
            start = self._next - self._buf_pos
            out.append(self._buffer[:, start : start + self.segment])  # a view: never written to
            self._next += self.hop
        drop = min(self._next - self._buf_pos, self._buffer.shape[1])
        self._buffer = self._buffer[:, drop:]
        self._buf_pos += drop
        return out

    def feed(self, block: np.ndarray) -> list[np.ndarray]:
        """Append (channels, n) samples; returns the segments now complete. Until a segment
        is complete the block is kept as it is (joined once then, not at every block): do not
        change it after."""
        self._fed += block.shape[1]
        self._waiting.append(block.astype(np.float32, copy=False))
        self._waiting_len += block.shape[1]
        if self._next + self.segment > self._buf_pos + self._buffer.shape[1] + self._waiting_len:
            return []  # no segment complete: the blocks wait, uncopied
        return self._cut()

    def finish(self) -> list[np.ndarray]:
        """End of input: zero-pad and return the remaining segments."""
        self._finished = True
        total = (self.segments_for(self._fed) - 1) * self.hop + self.segment
        missing = total - (self._buf_pos + self._buffer.shape[1] + self._waiting_len)
        if missing > 0:
            self._waiting.append(np.zeros((self._buffer.shape[0], missing), np.float32))
        return self._cut()

    def add(self, processed: np.ndarray) -> np.ndarray:
        """Overlap-add the next processed segment; returns the samples now final.

        The sums start at this segment's start: the first ``left`` samples hold the earlier
        segments' tails, the rest is this segment's alone (``0 + x * w`` as a sum from zero,
        which turns -0.0 into 0.0). Where only this segment counts and its window is one, the
        weights sum to exactly 1 and the division would return the sum unchanged: it is copied."""
        flat = processed.reshape(-1, self.segment)
        rows, left = flat.shape[0], self._acc.shape[1]
        acc, wsum = np.empty((rows, self.segment), np.float32), np.empty(self.segment)
        if left:
            np.multiply(flat[:, :left], self.window[:left], out=acc[:, :left])
            acc[:, :left] += self._acc
            np.add(self._wsum, self.window[:left], out=wsum[:left])
        np.multiply(flat[:, left:], self.window[left:], out=acc[:, left:])
        acc[:, left:] += np.float32(0)
        wsum[left:] = self.window[left:]
        self._added += 1
        # Positions before the next segment's start are touched by no later segment.
        ready = self.hop
        if self._finished and self._added == self.segments_for(self._fed):
            ready = self.segment
        done = np.empty((rows, ready), np.float32)
        one_from, one_to = max(left, self._ones[0]), min(ready, self._ones[1])
        if one_from >= one_to:
            one_from = one_to = ready
        for lo, hi in ((0, one_from), (one_to, ready)):  # divided in float64, rounded once
            if lo < hi:
                where = slice(lo, hi)
                np.divide(acc[:, where], wsum[where], out=done[:, where], dtype=np.float64,
                          casting="same_kind")
        done[:, one_from:one_to] = acc[:, one_from:one_to]
        self._acc, self._wsum = acc[:, ready:], wsum[ready:]
        first, self._out_pos = self._out_pos, self._out_pos + ready
        # Keep real samples only: padded positions [pad, pad + fed).
        lo, hi = max(self.pad - first, 0), max(min(self.pad + self._fed - first, ready), 0)
        return done[:, lo : max(lo, hi)].reshape(*processed.shape[:-1], -1)
