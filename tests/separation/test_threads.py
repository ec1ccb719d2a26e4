"""Host work beside the model: the decoding and writing threads (order, errors raised where
they are handed over, stopping), the engine's batches in flight (results added in order, the
same bits as one batch at a time), a separation whose reader, writer or caller fails: one
error, no partial output, no thread left; and a folder, whose next file begins while the
last one's tail runs: the same bits, each failure and warning its own file's, Ctrl-C or an
early stop leaving neither file in progress behind."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, Separator
from bsmamba2.audio import AudioError
from bsmamba2.audio import io as audio_io
from bsmamba2.fileio import WriteError
from bsmamba2.separation import engine as engine_module
from bsmamba2.separation.chunking import Chunker
from bsmamba2.separation.engine import BatchSize, SegmentModel, SegmentStream
from bsmamba2.separation.files import FileJob, run_jobs
from bsmamba2.separation.threads import Ahead, Behind
from tests.helpers.configs import MICRO
from tests.helpers.models import MaskModel
from tests.separation.test_engine import CPU, PLAN, segment_level, stream


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("bsmamba2-")}


def test_ahead_gives_the_items_in_order_then_the_sources_error():
    def items():
        yield from range(20)
        raise AudioError("in.wav: decoding failed at 3.0 s")

    got = []
    with Ahead(items(), depth=3) as ahead, pytest.raises(AudioError, match=r"decoding failed at 3\.0 s"):
        for item in ahead:
            got.append(item)
            time.sleep(0.001 * (item % 3))  # the consumer slower and faster than the producer
    assert got == list(range(20))
    assert not _threads()


def test_ahead_stops_an_endless_source_when_the_consumer_leaves():
    closed = []

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.append(True)

    with pytest.raises(KeyboardInterrupt), Ahead(endless(), depth=2) as ahead:
        for item in ahead:
            if item == 5:
                raise KeyboardInterrupt
    assert closed == [True] and not _threads()  # the generator's cleanup ran, the thread is gone


def test_behind_runs_the_calls_in_order_and_raises_the_first_error_at_the_next_hand_over():
    done = []
    with Behind(depth=2) as behind:
        for n in range(30):
            behind.submit(done.append, n)
    assert done == list(range(30))

    def write(n):
        if n == 3:
            raise WriteError("no space left on device writing out/vocals.wav", 28)
        done.append(n)

    done.clear()
    with pytest.raises(WriteError, match="no space left"), Behind(depth=2) as behind:
        for n in range(1000):
            behind.submit(write, n)
    assert done == [0, 1, 2] and not _threads()  # nothing after the failed call


def test_behind_abort_drops_what_waits_and_waits_for_the_running_call():
    started, finished = threading.Event(), []

    def slow(n):
        started.set()
        time.sleep(0.05)
        finished.append(n)

    with pytest.raises(KeyboardInterrupt), Behind(depth=8) as behind:
        for n in range(5):
            behind.submit(slow, n)
        started.wait()
        raise KeyboardInterrupt
    assert finished and finished == list(range(len(finished))) and len(finished) < 5
    assert not _threads()


class Deferred:
    """Results handed out later, as a GPU's are: records when each is taken; ``ready()`` says
    whether they are back (``there``), as :class:`~bsmamba2.separation.engine.Results` does."""

    def __init__(self, values: np.ndarray, log: list, number: int, there: bool) -> None:
        self.values, self.log, self.number, self.there = values, log, number, there

    def ready(self) -> bool:
        return self.there

    def result(self) -> np.ndarray:
        self.log.append(("result", self.number))
        return self.values


@pytest.mark.parametrize("there", [False, True], ids=["still-running", "back"])
@pytest.mark.parametrize("shifts", [(0,), (0, 37)])
def test_batches_are_started_at_once_their_results_added_in_order_and_change_no_bit(shifts, there):
    """No batch waits to be started behind another's results: with the device busy, the host
    starts AHEAD batches before it waits for the oldest; results already back are added at
    once, before the next batch is started. Either way the same bits as one at a time."""
    x = np.random.default_rng(6).standard_normal((2, 9000)).astype(np.float32)
    log = []

    def run(segments):
        number = sum(1 for kind, _ in log if kind == "submit")
        log.append(("submit", number))
        return Deferred(segment_level(segments), log, number, there)

    cuts = [700, 2000, 2900, 7000]
    want = stream(x, SegmentStream(segment_level, PLAN, 2, 4, BatchSize(3, 0.01, CPU), shifts), cuts)
    engine = SegmentStream(run, PLAN, 2, 4, BatchSize(3, 0.01, CPU), shifts)
    parts = []
    for block in np.split(x, cuts, axis=1):
        log.append(("feed", None))
        parts.append(engine.feed(block))
    log.append(("feed", None))
    parts.append(engine.finish())
    log.append(("feed", None))
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), want)
    taken = [n for kind, n in log if kind == "result"]
    submitted = sum(1 for kind, _ in log if kind == "submit")
    assert taken == sorted(taken) == list(range(submitted)) and submitted > engine_module.AHEAD + 1
    for k in taken:
        at = log.index(("submit", k))
        if there:  # added in the same call that started it: nothing else waits for the host
            assert log.index(("result", k)) < log.index(("feed", None), at)
        elif k + engine_module.AHEAD < submitted:  # waited for only with AHEAD more started
            assert log.index(("submit", k + engine_module.AHEAD)) < log.index(("result", k))
    outstanding = 0
    for kind, _ in log:
        outstanding += {"submit": 1, "result": -1}.get(kind, 0)
        assert outstanding <= engine_module.AHEAD + 1


@pytest.mark.parametrize("shifts", [(0,), (0, 37)])
def test_the_drain_hands_out_each_segments_samples_before_the_next_is_added(shifts):
    """After the last batch only its last segment's samples are left to write: the drain
    hands out what each segment made final before adding the next one (the caller writes it
    meanwhile), one piece per segment still in flight, the same bits as one at a time."""
    x = np.random.default_rng(8).standard_normal((2, 4000)).astype(np.float32)
    log = []

    def run(segments):
        return Deferred(segment_level(segments), log, len(log), there=False)

    want = stream(x, SegmentStream(segment_level, PLAN, 2, 4, BatchSize(3, 0.01, CPU), shifts), [1500])
    engine = SegmentStream(run, PLAN, 2, 4, BatchSize(3, 0.01, CPU), shifts)
    parts = [engine.feed(x[:, :1500]), engine.feed(x[:, 1500:]), engine.end()]
    in_flight = sum(len(batch) for batch, _ in engine.flight)
    assert len(engine.flight) > 1 and in_flight > len(engine.flight)
    drained = list(engine.drain())
    assert len(drained) == in_flight  # with two passes a piece waits for the other pass's
    assert len(shifts) > 1 or all(part.shape[1] for part in drained)
    np.testing.assert_array_equal(np.concatenate(parts + drained, axis=1), want)


def _song(tmp_path, seconds=3.0):
    x = np.random.default_rng(7).standard_normal((2, int(seconds * 44100))).astype(np.float32) * 0.1
    sf.write(tmp_path / "song.wav", x.T, 44100, subtype="FLOAT")
    return tmp_path / "song.wav", x


def test_a_file_through_the_threads_is_the_array_separation(tmp_path):
    path, x = _song(tmp_path)
    sep = Separator(MaskModel(gain=0.5), device="cpu", segment=0.5, batch_size=2, progress=False)
    out = sep.separate_file(path, tmp_path / "out")
    want = sep.separate(x, 44100)
    for stem, target in out.items():
        np.testing.assert_array_equal(sf.read(target, dtype="float32")[0].T, want[stem])
    assert not _threads()


class Late:
    """A batch's results as a busy GPU hands them out: not back at the first ``ready()``."""

    def __init__(self, results) -> None:
        self.results, self.asked = results, False

    def ready(self) -> bool:
        back, self.asked = self.asked, True
        return back

    def result(self) -> np.ndarray:
        return self.results.result()


CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(("device", "fmt", "bit_depth"), [
    ("cpu", "wav", "float"), ("cpu", "wav", "16"), ("cpu", "flac", "24"),
    pytest.param("cuda", "wav", "float", marks=CUDA_ONLY), pytest.param("cuda", "wav", "16", marks=CUDA_ONLY),
])
def test_the_files_are_the_bytes_of_the_sequential_separation(tmp_path, device, fmt, bit_depth):
    """The whole pipeline (decoding ahead, every batch started at once, results taken as they
    come back, each stem written and finished in its own thread) against the same separation
    done one step after the other: every segment cut first, the model run one batch at a time,
    overlap-added in order, the accompaniment subtracted, each file written in one call. The
    files hold the same samples, bit for bit, in their own format (loud enough input that the
    16-bit files clip); the headers differ only by libsndfile's time stamp. On the CPU the
    results come back late (:class:`Late`), on CUDA as the device hands them back."""
    torch.manual_seed(11)
    model = BSMamba2(MICRO).eval()
    rng = np.random.default_rng()  # a fresh input each run
    x = (rng.standard_normal((2, 3 * 65536 + 5000)) * 0.6).astype(np.float32)
    sf.write(tmp_path / "song.wav", x.T, 44100, subtype="FLOAT")
    sep = Separator(model, device=device, segment=0.5, batch_size=2, precision="fp32", progress=False)
    if device == "cpu":
        submit = sep.runner.submit
        sep.runner.submit = lambda segments: Late(submit(segments))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 16-bit files clip
        out = sep.separate_file(tmp_path / "song.wav", tmp_path / "out", fmt=fmt, bit_depth=bit_depth)

    chunk = sep.chunking
    chunker = Chunker(chunk.segment, chunk.hop, chunk.pad, 2)
    segments = chunker.feed(x) + chunker.finish()
    assert len(segments) > 2 * (engine_module.AHEAD + 1)  # more batches than are ever in flight
    parts = [chunker.add(r) for i in range(0, len(segments), 2) for r in sep.runner(segments[i : i + 2])]
    vocals = np.concatenate(parts, axis=-1)[0]
    subtype, stored = {"float": ("FLOAT", "float32"), "16": ("PCM_16", "int16"), "24": ("PCM_24", "int32")}[bit_depth]
    for stem, audio in {"vocals": vocals, "accompaniment": x - vocals}.items():
        want = tmp_path / f"want_{stem}.{fmt}"
        sf.write(want, audio.T, 44100, subtype=subtype)
        assert sf.info(out[stem]).subtype == subtype
        got, expected = sf.read(out[stem], dtype=stored)[0], sf.read(want, dtype=stored)[0]
        assert got.shape == expected.shape == (x.shape[1], 2) and got.tobytes() == expected.tobytes(), stem
    assert not _threads()


def test_a_failing_write_in_the_thread_is_the_error_and_leaves_nothing(tmp_path, monkeypatch):
    path, _ = _song(tmp_path)
    original, calls = audio_io.AudioWriter.write, []

    def failing(self, block):
        calls.append(1)
        if len(calls) == 4:
            raise WriteError(f"no space left on device writing {self.path}", 28)
        original(self, block)

    monkeypatch.setattr(audio_io.AudioWriter, "write", failing)
    sep = Separator(MaskModel(), device="cpu", segment=0.5, progress=False)
    with pytest.raises(WriteError, match=r"^no space left on device writing .*(vocals|accompaniment)\.wav$"):
        sep.separate_file(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not _threads()


def test_a_decoding_error_in_the_thread_is_the_error_and_leaves_nothing(tmp_path, monkeypatch):
    path, _ = _song(tmp_path)
    original = audio_io._SoundFileSource._raw_blocks

    def broken(self, blocksize):
        for number, block in enumerate(original(self, 4096)):
            if number == 5:
                raise AudioError(f"{self.path}: a broken frame")
            yield block

    monkeypatch.setattr(audio_io._SoundFileSource, "_raw_blocks", broken)
    sep = Separator(MaskModel(), device="cpu", segment=0.5, progress=False)
    with pytest.raises(AudioError, match=r"song\.wav: a broken frame$"):
        sep.separate_file(path, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not _threads()


def test_ctrl_c_stops_both_threads_and_removes_the_outputs(tmp_path):
    path, _ = _song(tmp_path, seconds=6.0)

    def cancel(event):
        if event.done > 1.0:
            raise KeyboardInterrupt

    sep = Separator(MaskModel(), device="cpu", segment=0.5, progress=False)
    with pytest.raises(KeyboardInterrupt):
        sep.separate_file(path, tmp_path / "out", on_progress=cancel)
    assert not (tmp_path / "out").exists() and not _threads()



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tta", [False, True])
def test_cuda_results_copied_behind_the_next_batch_are_the_synchronous_ones(tta):
    """Pinned, non-blocking copies read only after their kernels: a batch's results taken
    while the next batch runs equal the model's output copied back synchronously, bit for bit
    (with ``tta``: the views averaged as before, in float32 on the host)."""
    torch.manual_seed(0)
    model = BSMamba2(MICRO).cuda().eval()
    run = SegmentModel(model, torch.device("cuda"), "fp32", tta=tta)
    rng = np.random.default_rng(9)
    batches = [[rng.standard_normal((2, 22050)).astype(np.float32) * 0.3 for _ in range(3)] for _ in range(2)]
    first = run.submit(batches[0])
    second = run.submit(batches[1])  # queued behind the first
    got = [first.result(), second.result()]
    for segments, result in zip(batches, got, strict=True):
        x = torch.from_numpy(np.stack(segments)).cuda()
        views = [run._view(x).cpu().numpy()]
        if tta:
            views += [-run._view(-x).cpu().numpy(), run._view(x.flip(1)).cpu().numpy()[:, :, ::-1]]
        np.testing.assert_array_equal(result, (sum(views) / len(views)).astype(np.float32))


def test_current_gpu_makes_a_cuda_device_current_and_leaves_the_cpu_alone(monkeypatch):
    """Triton launches on the current CUDA device (cuda:0 in every new thread, whatever the
    tensors' device): ``current_gpu``, around each submit and in each warm-up thread, makes
    the model's GPU current; on the CPU it does nothing."""
    from bsmamba2 import device as device_module

    made = []

    class Recorder:
        def __init__(self, device):
            made.append(device)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    with device_module.current_gpu(torch.device("cuda:1")):
        pass
    with device_module.current_gpu(CPU):
        pass
    assert made == [torch.device("cuda:1")]


# -- a folder: the next file begins while the last one's tail runs (files.run_jobs) -----------


class CountingMask(MaskModel):
    """A mask model that records, at each call, the outputs in place and those half-written."""

    def __init__(self, out, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out, self.calls = out, []

    def forward(self, spec):
        done = sorted(p.parent.name for p in self.out.glob("*/vocals.wav"))
        writing = sorted({p.parent.name for p in self.out.glob("*/.*.part")})
        self.calls.append((done, writing))
        return super().forward(spec)


def _songs(tmp_path, count=3, seconds=2.0):
    paths = []
    for number in range(count):
        x = np.random.default_rng(20 + number).standard_normal((2, int(seconds * 44100))).astype(np.float32) * 0.1
        paths.append(tmp_path / "in" / f"song{number}.wav")
        paths[-1].parent.mkdir(exist_ok=True)
        sf.write(paths[-1], x.T, 44100, subtype="FLOAT")
    return paths


def _outputs(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def test_the_next_file_starts_before_the_last_one_is_written_and_changes_no_bit(tmp_path):
    songs, out = _songs(tmp_path), tmp_path / "out"
    alone = CountingMask(tmp_path / "alone", gain=0.5)
    sep = Separator(alone, device="cpu", segment=0.5, batch_size=2, progress=False)
    want = [sep.separate_file(song, tmp_path / "alone") for song in songs]
    per_file = len(alone.calls) // len(songs)
    assert per_file * len(songs) == len(alone.calls) and per_file >= 3

    model = CountingMask(out, gain=0.5)
    sep = Separator(model, device="cpu", segment=0.5, batch_size=2, progress=False)
    reports = list(run_jobs(sep, [FileJob(song, out) for song in songs], overlap=True))
    assert [r.status for r in reports] == ["separated"] * 3
    assert [Path(r.input).name for r in reports] == [s.name for s in songs]
    for report, expected in zip(reports, want, strict=True):
        for stem, path in report.outputs.items():
            assert sf.read(path, dtype="float32")[0].tobytes() == sf.read(expected[stem], dtype="float32")[0].tobytes()
    for number, song in enumerate(songs[:-1]):  # its outputs appear only after the next file's first batch
        first_seen = next(i for i, (done, _) in enumerate(model.calls) if song.stem in done)
        assert first_seen == (number + 1) * per_file + 1
    assert all(len(writing) <= 2 for _, writing in model.calls)  # never more than two files open
    assert any(len(writing) == 2 for _, writing in model.calls)
    assert not list(out.rglob(".*.part")) and not _threads()

    model.calls.clear()  # on the CPU by default, one file after the other
    again = list(run_jobs(sep, [FileJob(song, out, {"overwrite": True}) for song in songs]))
    assert [r.status for r in again] == ["separated"] * 3
    assert all(len(writing) == 1 for _, writing in model.calls)


def test_a_failing_file_loses_neither_neighbours_outputs(tmp_path, monkeypatch):
    """song0 fails in its tail (its outputs' rename), while song1 has begun; song2 fails in its
    head (decoding), while song1's tail waits: each failure is its file's report alone."""
    songs, out = _songs(tmp_path), tmp_path / "out"
    original_close, original_blocks = audio_io.AudioWriter.close, audio_io._SoundFileSource._raw_blocks

    def close(self):
        if "song0" in str(self.path):
            raise WriteError(f"input/output error writing {self.path}", 5)
        original_close(self)

    def blocks(self, blocksize):
        for number, block in enumerate(original_blocks(self, 4096)):
            if number == 3 and "song2" in str(self.path):
                raise AudioError(f"{self.path}: a broken frame")
            yield block

    monkeypatch.setattr(audio_io.AudioWriter, "close", close)
    monkeypatch.setattr(audio_io._SoundFileSource, "_raw_blocks", blocks)
    sep = Separator(MaskModel(), device="cpu", segment=0.5, batch_size=2, progress=False)
    reports = list(run_jobs(sep, [FileJob(song, out) for song in songs], overlap=True))
    assert [r.status for r in reports] == ["failed", "separated", "failed"]
    assert reports[0].error.startswith("input/output error writing") and reports[0].errno == 5
    assert reports[2].error.endswith("song2.wav: a broken frame")
    assert _outputs(out) == ["song1", "song1/accompaniment.wav", "song1/vocals.wav"]
    assert not _threads()


def test_ctrl_c_in_the_next_files_head_removes_both_files_in_progress(tmp_path):
    songs, out = _songs(tmp_path), tmp_path / "out"
    per_file = 3  # batches of a 2 s song (the first test counts them)

    class Interrupted(MaskModel):
        calls = 0

        def forward(self, spec):
            self.calls += 1
            if self.calls == 2 * per_file + 1:  # song2's first batch, while song1's tail waits
                assert list(out.glob("song1/.*.part"))
                raise KeyboardInterrupt
            return super().forward(spec)

    sep = Separator(Interrupted(), device="cpu", segment=0.5, batch_size=2, progress=False)
    reports = run_jobs(sep, [FileJob(song, out) for song in songs], overlap=True)
    assert next(reports).status == "separated"
    with pytest.raises(KeyboardInterrupt):
        next(reports)
    assert _outputs(out) == ["song0", "song0/accompaniment.wav", "song0/vocals.wav"]
    assert not _threads()


def test_leaving_early_removes_the_begun_file_and_its_threads(tmp_path):
    songs, out = _songs(tmp_path), tmp_path / "out"
    sep = Separator(MaskModel(), device="cpu", segment=0.5, batch_size=2, progress=False)
    reports = run_jobs(sep, [FileJob(song, out) for song in songs], overlap=True)
    assert next(reports).status == "separated"
    assert list(out.glob("song1/.*.part")) and _threads()  # song1 has begun
    reports.close()
    assert _outputs(out) == ["song0", "song0/accompaniment.wav", "song0/vocals.wav"]
    assert not _threads()


def test_each_warning_is_its_own_files_even_from_the_reading_thread(tmp_path, monkeypatch):
    songs, out = _songs(tmp_path), tmp_path / "out"
    original = audio_io._SoundFileSource._raw_blocks

    def blocks(self, blocksize):
        for number, block in enumerate(original(self, 4096)):
            if number == 2:
                assert threading.current_thread().name == "bsmamba2-decode"
                warnings.warn(f"{self.path.name}: read in a thread", UserWarning, stacklevel=1)
            yield block

    monkeypatch.setattr(audio_io._SoundFileSource, "_raw_blocks", blocks)
    sep = Separator(MaskModel(gain=4.0), device="cpu", segment=0.5, batch_size=2, progress=False)
    jobs = [FileJob(song, out, {"bit_depth": "16"} if song.stem == "song1" else {}) for song in songs]
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        reports = list(run_jobs(sep, jobs, overlap=True))
    said = [[message for message, _, _ in r.warnings] for r in reports]
    assert said[0] == ["song0.wav: read in a thread"] and said[2] == ["song2.wav: read in a thread"]
    assert said[1][0] == "song1.wav: read in a thread" and len(said[1]) == 3  # and both stems clipped
    assert all("song1" in m and "clipped in the 16-bit file" in m for m in said[1][1:])
    assert not outside  # none left over, none shown
