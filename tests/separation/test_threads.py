"""Host work beside the model: the decoding and writing threads (order, errors raised where
they are handed over, stopping), the engine's batches in flight (results added in order, the
same bits as one batch at a time), and a separation whose reader, writer or caller fails:
one error, no partial output, no thread left."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, Separator
from bsmamba2.audio import AudioError
from bsmamba2.audio import io as audio_io
from bsmamba2.fileio import WriteError
from bsmamba2.separation import engine as engine_module
from bsmamba2.separation.engine import BatchSize, SegmentModel, SegmentStream
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
    """Results handed out later, as a GPU's are: records when each is taken."""

    def __init__(self, values: np.ndarray, log: list, number: int) -> None:
        self.values, self.log, self.number = values, log, number

    def result(self) -> np.ndarray:
        self.log.append(("result", self.number))
        return self.values


@pytest.mark.parametrize("shifts", [(0,), (0, 37)])
def test_batches_in_flight_are_added_in_order_and_change_no_bit(shifts):
    x = np.random.default_rng(6).standard_normal((2, 9000)).astype(np.float32)
    log = []

    def run(segments):
        number = sum(1 for kind, _ in log if kind == "submit")
        log.append(("submit", number))
        return Deferred(segment_level(segments), log, number)

    want = stream(x, SegmentStream(segment_level, PLAN, 2, 4, BatchSize(3, 0.01, CPU), shifts), [2000, 7000])
    got = stream(x, SegmentStream(run, PLAN, 2, 4, BatchSize(3, 0.01, CPU), shifts), [2000, 7000])
    np.testing.assert_array_equal(got, want)
    taken = [n for kind, n in log if kind == "result"]
    assert taken == sorted(taken) == list(range(len(taken))) and len(taken) > 3
    for k in taken[:-1]:  # each batch's results are taken only after the next batch started
        assert log.index(("submit", k + 1)) < log.index(("result", k))
    outstanding = 0
    for kind, _ in log:
        outstanding += 1 if kind == "submit" else -1
        assert outstanding <= engine_module.IN_FLIGHT + 1


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
