"""The streaming engine on its own, without files or resampling: overlap-add against a float64
one-shot reference, out-of-memory batch shrinking, FIFO order, the compile decision, and the
BSMamba2 model callable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsmamba2 import BSMamba2
from bsmamba2.errors import BSMamba2Error
from bsmamba2.model import istft, stft
from bsmamba2.separation import engine as engine_module
from bsmamba2.separation.chunking import Chunking
from bsmamba2.separation.engine import AutoCompile, BatchSize, Fifo, SegmentModel, SegmentStream
from tests.helpers.configs import MICRO
from tests.helpers.models import MaskModel

CPU = torch.device("cpu")
PLAN = Chunking(segment=512, hop=384, pad=128)


def segment_level(segments: list[np.ndarray]) -> np.ndarray:
    """A 'model' whose output depends on the whole segment (its mean magnitude) and on each
    sample nonlinearly: a misplaced, misweighted or reordered segment changes the result.
    Two stems: (B, 2, C, S)."""
    x = np.stack(segments).astype(np.float64)
    level = 0.5 + np.abs(x).mean(axis=(1, 2), keepdims=True)
    return np.stack([np.tanh(2 * x) * level, x * x], axis=1).astype(np.float32)


def reference(x: np.ndarray, plan: Chunking, model=segment_level) -> np.ndarray:
    """The one-shot float64 overlap-add, written from the definition: pad by ``pad`` zeros at
    both ends (and to whole segments at the end), cut every ``hop``, weight by linear ramps
    over the overlap, add, divide by the summed weights, crop the padding."""
    channels, n = x.shape
    count = max(1, int(np.ceil((2 * plan.pad + n - plan.segment) / plan.hop)) + 1)
    padded = np.zeros((channels, (count - 1) * plan.hop + plan.segment))
    padded[:, plan.pad : plan.pad + n] = x
    overlap = plan.segment - plan.hop
    ramp = (np.arange(overlap) + 0.5) / overlap
    window = np.ones(plan.segment)
    window[:overlap] = ramp
    window[plan.segment - overlap :] = np.minimum(window[plan.segment - overlap :], ramp[::-1])
    total = np.zeros((2 * channels, padded.shape[1]))
    weights = np.zeros(padded.shape[1])
    for k in range(count):
        where = slice(k * plan.hop, k * plan.hop + plan.segment)
        out = model([padded[:, where].astype(np.float32)])[0].astype(np.float64)
        total[:, where] += out.reshape(2 * channels, -1) * window
        weights[where] += window
    return (total / weights)[:, plan.pad : plan.pad + n]


def stream(x: np.ndarray, engine: SegmentStream, cuts: list[int]) -> np.ndarray:
    """``x`` fed in blocks ending at ``cuts``, then finished; the outputs joined."""
    parts = [engine.feed(block) for block in np.split(x, cuts, axis=1)]
    return np.concatenate([*parts, engine.finish()], axis=1)


@pytest.mark.parametrize(("channels", "n", "batch"), [(2, 5003, 1), (2, 5003, 3), (1, 300, 2), (2, 2048, 16)])
def test_overlap_add_equals_the_one_shot_reference(channels, n, batch):
    rng = np.random.default_rng(n + batch)
    x = rng.standard_normal((channels, n)).astype(np.float32) * 0.5
    cuts = sorted(rng.choice(np.arange(1, n), size=min(6, n - 1), replace=False))
    engine = SegmentStream(segment_level, PLAN, channels, 2 * channels, BatchSize(batch, 0.01, CPU))
    got = stream(x, engine, cuts)
    assert got.shape == (2 * channels, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(x, PLAN), rtol=0, atol=2e-6)
    pointwise = SegmentStream(lambda s: np.tanh(np.stack(s))[:, None], PLAN, channels, channels,
                              BatchSize(batch, 0.01, CPU))
    np.testing.assert_allclose(stream(x, pointwise, cuts), np.tanh(x), rtol=0, atol=2e-6)  # weights sum to 1


def test_the_official_plan_is_back_to_back_segments():
    x = np.random.default_rng(1).standard_normal((2, 1500)).astype(np.float32)
    plan = Chunking(segment=512, hop=512, pad=0)
    seen = []

    def run(segments):
        seen.extend(segments)
        return segment_level(segments)

    got = stream(x, SegmentStream(run, plan, 2, 4, BatchSize(2, 0.01, CPU)), [700])
    padded = np.concatenate([x, np.zeros((2, 3 * 512 - 1500), np.float32)], axis=1)
    assert [s.tolist() for s in seen] == [padded[:, k * 512 : (k + 1) * 512].tolist() for k in range(3)]
    np.testing.assert_allclose(got, segment_level(seen).transpose(1, 2, 0, 3).reshape(4, -1)[:, :1500], atol=0)


def test_shifts_average_passes_over_delayed_inputs():
    x = np.random.default_rng(2).standard_normal((2, 3001)).astype(np.float32) * 0.5
    delays = [0, 37, 200]
    engine = SegmentStream(segment_level, PLAN, 2, 4, BatchSize(3, 0.01, CPU), shifts=delays)
    got = stream(x, engine, [1000, 1001, 2500])
    by_hand = [reference(np.concatenate([np.zeros((2, d), np.float32), x], axis=1), PLAN)[:, d:] for d in delays]
    np.testing.assert_allclose(got, sum(by_hand) / 3, rtol=0, atol=2e-6)
    assert np.abs(got - by_hand[0]).max() > 1e-3  # the delays matter for this model


def test_out_of_memory_shrinks_the_batch_and_changes_nothing_bit_for_bit():
    x = np.random.default_rng(3).standard_normal((2, 9000)).astype(np.float32)
    calls = []

    def limited(limit):
        def run(segments):
            calls.append(len(segments))
            if len(segments) > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return segment_level(segments)
        return run

    want = stream(x, SegmentStream(segment_level, PLAN, 2, 4, BatchSize(1, 0.01, CPU)), [4000])
    batch = BatchSize(8, 0.01, CPU)
    with pytest.warns(UserWarning) as caught:
        got = stream(x, SegmentStream(limited(2), PLAN, 2, 4, batch), [4000])
    assert [str(w.message) for w in caught] == [
        "out of GPU memory with 8 segments per pass: continuing with 4",
        "out of GPU memory with 4 segments per pass: continuing with 2",
    ]
    assert batch.size == 2 and calls[:3] == [8, 4, 2]
    np.testing.assert_array_equal(got, want)
    calls.clear()
    again = stream(x, SegmentStream(limited(2), PLAN, 2, 4, batch), [4000])  # the policy remembers
    assert max(calls) == 2
    np.testing.assert_array_equal(again, want)
    with pytest.warns(UserWarning), pytest.raises(BSMamba2Error, match=r"one 0\.01 s segment"):
        stream(x, SegmentStream(limited(0), PLAN, 2, 4, BatchSize(2, 0.01, CPU)), [])


def test_fifo_is_first_in_first_out():
    rng = np.random.default_rng(4)
    fifo, pushed, popped = Fifo(6), [], []
    for _ in range(30):
        block = rng.standard_normal((2, 3, int(rng.integers(0, 50)))).astype(np.float32)
        fifo.push(block)  # (stems, channels, n) goes in as (6, n)
        pushed.append(block.reshape(6, -1))
        popped.append(fifo.pop(int(rng.integers(0, 60))))
    popped.append(fifo.pop(10**6))  # more than there is: what is there
    assert len(fifo) == 0
    np.testing.assert_array_equal(np.concatenate(popped, axis=1), np.concatenate(pushed, axis=1))


def test_auto_compile_decides_once_after_the_first_batch(monkeypatch):
    asked, compiled = [], []
    monkeypatch.setattr(engine_module, "compile_pays", lambda eager, warm: asked.append((eager, warm)) or True)
    decision = AutoCompile(total_segments=10, compile=compiled.append, warm=lambda: True)
    assert decision.decide(per_segment=3.0, done=2) and compiled == [24.0] and asked == [(24.0, True)]
    assert not AutoCompile(None, compiled.append).decide(3.0, 2) and compiled == [24.0]  # unknown length
    monkeypatch.setattr(engine_module, "compile_pays", lambda eager, warm: False)
    assert not AutoCompile(10, compiled.append).decide(3.0, 2) and compiled == [24.0]

    x = np.random.default_rng(5).standard_normal((2, 5000)).astype(np.float32)
    decisions = []

    class Recorder(AutoCompile):
        def decide(self, per_segment, done):
            decisions.append((per_segment, done))
            return False

    engine = SegmentStream(segment_level, PLAN, 2, 4, BatchSize(3, 0.01, CPU), auto_compile=Recorder(14, None))
    got = stream(x, engine, [100, 2000])
    assert len(decisions) == 1 and decisions[0][0] > 0 and decisions[0][1] == 3
    np.testing.assert_allclose(got, reference(x, PLAN), rtol=0, atol=2e-6)


def test_segment_model_runs_a_batch_as_each_segment_alone():
    torch.manual_seed(0)
    model = BSMamba2(MICRO).eval()
    run = SegmentModel(model, CPU, "fp32")
    segments = [np.random.default_rng(i).standard_normal((2, 4410)).astype(np.float32) * 0.3 for i in range(3)]
    got = run(segments)
    assert got.shape == (3, 1, 2, 4410)
    with torch.inference_mode():
        for segment, out in zip(segments, got, strict=True):
            spec = stft(torch.from_numpy(segment)[None], MICRO)
            alone = istft(model(spec), MICRO, length=4410)[0].numpy()
            np.testing.assert_allclose(out, alone, rtol=0, atol=1e-5 * np.abs(alone).max())
    mono = SegmentModel(MaskModel(gain=0.5), CPU, "fp32")([s[:1] for s in segments])  # dual mono, back
    np.testing.assert_allclose(mono, 0.5 * np.stack([s[:1] for s in segments])[:, None], atol=1e-5)
    assert not run.compiled
