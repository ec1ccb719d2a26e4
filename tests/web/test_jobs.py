"""The job queue of ``bsmamba2 serve`` without HTTP: separation and progress, one job at a
time (or N on the CPU), limits, names that never become paths, errors, clean-up."""

from __future__ import annotations

import dataclasses
import logging
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import Separator
from bsmamba2.checkpoint.io import CheckpointError
from bsmamba2.errors import BSMamba2Error
from bsmamba2.web.jobs import JobError, JobQueue, Limits, display_name, waveform_peaks
from bsmamba2.web.models import ModelChoice, ModelShelf
from tests.helpers.models import MaskModel
from tests.helpers.web import tones, wait_for

RATE = 44100  # the model's rate: no resampling, so the mask is exact


class GateModel(MaskModel):
    """A half mask that holds each forward pass until ``gate`` opens and counts the passes
    running at once (``most``); ``fail`` makes it raise instead."""

    def __init__(self) -> None:
        super().__init__(gain=0.5)
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.active = self.most = self.calls = 0
        self.fail: BaseException | None = None

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            assert self.gate.wait(30), "gate never opened"
            if self.fail is not None:
                raise self.fail
            return super().forward(spec)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def model() -> GateModel:
    return GateModel()


@pytest.fixture
def make_queue(model, tmp_path):
    queues = []

    def make(workers: int = 1, **limits) -> JobQueue:
        separator = Separator(model, device="cpu", segment=0.5, progress=False)
        queues.append(JobQueue(separator, Limits(**limits), workers=workers, root=tmp_path))
        return queues[-1]

    yield make
    for jobs in queues:
        jobs.close()


def song(tmp_path: Path, seconds: float = 1.5, seed: int = 0, name: str = "song.wav") -> tuple[Path, np.ndarray]:
    audio = tones(2, seconds, RATE, seed)
    path = tmp_path / "client" / name
    path.parent.mkdir(exist_ok=True)
    sf.write(path, audio.T, RATE, subtype="FLOAT")
    return path, audio


def add(jobs: JobQueue, job, path: Path, name: str | None = None):
    upload = jobs.upload(job, name or path.name)
    data = path.read_bytes()
    for start in range(0, len(data), 65536):
        upload.write(data[start : start + 65536])
    return upload.finish()


def finished(job) -> bool:
    return job.status in ("done", "cancelled")


def test_a_job_separates_every_file_with_progress_and_pictures(make_queue, tmp_path, model):
    jobs = make_queue()
    job = jobs.create({"picture": True})
    inputs = [song(tmp_path, 1.5, seed, f"song{seed}.wav") for seed in (1, 2)]
    for path, _ in inputs:
        add(jobs, job, path)
    model.gate.clear()  # hold the first file mid-way to see its progress
    jobs.start(job)
    first = job.files[0]
    wait_for(lambda: model.active, 10, "the first forward pass")
    assert (job.status, first.status, first.total) == ("running", "separating", pytest.approx(1.5))
    model.gate.set()
    wait_for(lambda: finished(job), 60, "the job")
    assert job.status == "done"
    for entry, (_, audio) in zip(job.files, inputs, strict=True):
        assert (entry.status, entry.stage, entry.error) == ("done", "done", "")
        assert entry.done == pytest.approx(1.5) and entry.total == entry.done
        vocals, rate = sf.read(entry.outputs["vocals"], dtype="float32", always_2d=True)
        accompaniment, _ = sf.read(entry.outputs["accompaniment"], dtype="float32", always_2d=True)
        assert rate == RATE and vocals.shape == audio.T.shape
        np.testing.assert_allclose(vocals, 0.5 * audio.T, atol=1e-5)  # the half mask
        np.testing.assert_allclose(vocals + accompaniment, audio.T, atol=1e-6)  # the null test
        assert entry.picture.read_bytes()[:4] == b"\x89PNG"
        peaks = entry.peaks["vocals"]
        assert 500 < len(peaks) <= 600 and max(peaks) == pytest.approx(np.abs(vocals).max(), abs=1e-4)
    state = jobs.state(job)
    assert state["status"] == "done" and [f["stems"] for f in state["files"]] == [["vocals", "accompaniment"]] * 2


def test_waveform_peaks_are_the_loudest_sample_of_each_stretch(tmp_path):
    x = np.random.default_rng(3).normal(0, 0.2, (10_007, 2)).astype(np.float32)
    sf.write(tmp_path / "x.wav", x, 8000, subtype="FLOAT")
    step = -(-len(x) // 600)
    want = [np.abs(x[i : i + step]).max() for i in range(0, len(x), step)]
    np.testing.assert_allclose(waveform_peaks(tmp_path / "x.wav"), want, atol=1e-4)


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_queue_one_at_a_time_or_as_configured(make_queue, tmp_path, model, workers):
    jobs = make_queue(workers=workers)
    path, _ = song(tmp_path, 0.6)
    queued = []
    for _ in range(3):
        job = jobs.create({})
        add(jobs, job, path)
        queued.append(job)
    model.gate.clear()
    for job in queued:
        jobs.start(job)
    wait_for(lambda: model.active == workers, 10, f"{workers} forward passes")
    if workers == 1:
        assert [job.status for job in queued] == ["running", "queued", "queued"]
        assert [jobs.state(job)["ahead"] for job in queued] == [0, 0, 1]
    else:
        assert [job.status for job in queued] == ["running", "running", "queued"]
    model.gate.set()
    for job in queued:
        wait_for(lambda job=job: finished(job), 60, "every job")
    assert model.most == workers
    assert all(job.status == "done" for job in queued)


def test_gpu_separators_run_one_job_at_a_time(model, tmp_path):
    separator = Separator(model, device="cpu", progress=False)
    separator.device = torch.device("cuda")  # the rule only, without a GPU
    with pytest.raises(BSMamba2Error, match="one job at a time on cuda: --jobs applies to the CPU only"):
        JobQueue(separator, workers=2, root=tmp_path)


def test_limits_refuse_with_one_line_and_keep_nothing(make_queue, tmp_path):
    jobs = make_queue(max_bytes=2**20, max_files=2)
    job = jobs.create({})
    big, _ = song(tmp_path, 8.0, name="big.wav")  # 2.8 MB of float
    with pytest.raises(JobError, match=r"^big.wav: larger than the server's limit of 1 MB \(--max-upload-mb\)$") as e:
        add(jobs, job, big)
    assert e.value.status == 413
    long_jobs = make_queue(max_seconds=2.0)
    long_job = long_jobs.create({})
    with pytest.raises(JobError, match=r"^big.wav: 8.0 s is longer than the server's limit of 2.0 s \(--max-minutes\)$"):
        add(long_jobs, long_job, big)
    garbage = tmp_path / "client" / "noise.wav"
    garbage.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(JobError, match=r"^noise.wav: not a readable audio file") as e:
        add(jobs, job, garbage)
    assert str(jobs.root) not in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(JobError, match=r"^notes.txt: not an audio file name bsmamba2 reads"):
        jobs.upload(job, "notes.txt")
    small, _ = song(tmp_path, 0.3)
    add(jobs, job, small)
    add(jobs, job, small)
    with pytest.raises(JobError, match=r"at most 2 files per job \(--max-files\)"):
        add(jobs, job, small)
    assert sorted(p.name for p in job.folder.iterdir()) == ["input-2.wav", "input-3.wav"]
    assert sorted(p.name for p in long_job.folder.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"stems": ["drums"]}, "unknown stem 'drums' (this model gives: vocals, accompaniment)"),
        ({"format": "aac"}, "unknown format 'aac' (choose from wav, flac, mp3, ogg, opus)"),
        ({"format": "flac", "bit_depth": "float"}, "FLAC stores integers only"),
        ({"stems": "vocals"}, "stems must be a list of names"),
        ({"stems": []}, "choose at least one stem"),
        ({"format": "mp3", "bit_depth": "16"}, "mp3 has no bit depth: drop bit-depth (or use format wav or flac)"),
        ({"format": "mp3", "bitrate": 999}, "mp3 at 48000 Hz, 2 channel(s): bitrate must be 32-320 kbps, got 999"),
        ({"format": "opus", "bitrate": "loud"}, "bitrate must be a whole number of kbps, got 'loud'"),
        ({"format": "wav", "bitrate": 128}, "bitrate applies to mp3 and opus, not wav"),
        ({"start": -1}, "preview start must be 0 or more seconds, got -1"),
        ({"start": "1:30"}, "preview start must be 0 or more seconds, got '1:30'"),
        ({"duration": 0}, "preview duration must be more than 0 seconds, got 0"),
        ({"duration": True}, "preview duration must be more than 0 seconds, got True"),
        ({"tta": "yes"}, "tta must be true or false, got 'yes'"),
        ({"tta": True}, "this server runs with TTA off only"),
    ],
)
def test_bad_options_are_one_line_errors(make_queue, options, message):
    with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_queue().create(options)


@pytest.mark.parametrize(
    ("sent", "shown"),
    [
        ("../../etc/evil.wav", "evil.wav"),
        ("C:\\Users\\me\\Music\\my song.flac", "my song.flac"),
        ("/abs/path/x.WAV", "x.WAV"),
        ("bad\x00\x1fname.wav", "badname.wav"),
        ("..", "audio"),
        ("x" * 300 + ".flac", "x" * 115 + ".flac"),
    ],
)
def test_names_from_the_browser_are_never_paths(sent, shown):
    assert display_name(sent) == shown


def test_uploads_land_in_the_job_folder_under_their_own_names(make_queue, tmp_path):
    jobs = make_queue()
    job = jobs.create({"format": "flac"})
    path, _ = song(tmp_path, 0.4)
    entry = add(jobs, job, path, "../../outside.wav")
    twin = add(jobs, job, path, "a/outside.wav")
    assert entry.path == job.folder / "input-0.wav" and entry.name == "outside.wav"
    jobs.start(job)
    wait_for(lambda: finished(job), 60, "the job")
    assert not (tmp_path / "outside.wav").exists() and not (tmp_path.parent / "outside.wav").exists()
    assert jobs.output(job, 0, "vocals") == (job.folder / "output-0" / "vocals.flac", "outside_vocals.flac")
    with pytest.raises(JobError, match="no such stem"):
        jobs.output(job, 0, "../input-0.wav")
    with pytest.raises(JobError, match="no such file"):
        jobs.output(job, 7, "vocals")
    archive, name = jobs.archive(job)
    assert name == "bsmamba2_stems.zip" and twin.name == "outside.wav"
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == [
            "outside (2)/accompaniment.flac",
            "outside (2)/vocals.flac",
            "outside/accompaniment.flac",
            "outside/vocals.flac",
        ]
        assert z.read("outside/vocals.flac") == (job.folder / "output-0" / "vocals.flac").read_bytes()


def test_errors_are_one_line_on_the_page_and_in_the_log(make_queue, tmp_path, model, caplog):
    caplog.set_level(logging.INFO, logger="bsmamba2.serve")
    jobs = make_queue()
    path, _ = song(tmp_path, 0.4)

    def run_failing(error: BaseException):
        model.fail = error
        job = jobs.create({})
        add(jobs, job, path, "my song.wav")
        jobs.start(job)
        wait_for(lambda: finished(job), 60, "the job")
        return job.files[0]

    oom = run_failing(MemoryError())
    assert (oom.status, oom.error) == ("error", "my song.wav: out of memory (try a shorter file or a smaller --segment)")
    bug = run_failing(RuntimeError("boom\nsecond line"))
    assert bug.error == "my song.wav: internal error (RuntimeError: boom second line)"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].getMessage().endswith(oom.error) and errors[0].exc_info is None
    assert errors[1].exc_info is not None  # a bug: the traceback goes to the server log only
    model.fail = None
    job = jobs.create({})
    entry = add(jobs, job, path)
    jobs.limits = dataclasses.replace(jobs.limits, max_seconds=0.2)  # as for a stream of unknown length
    jobs.start(job)
    wait_for(lambda: finished(job), 60, "the job")
    assert entry.error == "song.wav: longer than the server's limit of 0.2 s (--max-minutes)"
    assert not [p for p in job.folder.rglob("output-0/*")]  # partial outputs removed


def test_jobs_are_removed_after_download_retention_deletion_and_shutdown(model, tmp_path):
    now = [0.0]
    separator = Separator(model, device="cpu", segment=0.5, progress=False)
    jobs = JobQueue(separator, Limits(keep_seconds=60), root=tmp_path, clock=lambda: now[0])
    path, _ = song(tmp_path, 0.4)
    forgotten = jobs.create({})  # at t=0, never started
    now[0] = 50.0
    done, running = jobs.create({}), jobs.create({})
    add(jobs, done, path)
    jobs.start(done)
    wait_for(lambda: finished(done), 60, "the job")  # finished at t=50
    add(jobs, running, path)
    model.gate.clear()
    jobs.start(running)
    wait_for(lambda: model.active, 10, "the running job")
    now[0] = 61.0
    assert jobs.expire() == [forgotten.id]
    assert not forgotten.folder.exists()
    with pytest.raises(JobError, match="no such job") as e:
        jobs.get(forgotten.id)
    assert e.value.status == 404
    now[0] = 111.0
    assert jobs.expire() == [done.id]  # a running job is never expired
    assert not done.folder.exists() and running.folder.exists()
    jobs.remove(running, "deleted from the page")  # cancels at the next block
    model.gate.set()
    wait_for(lambda: not running.folder.exists(), 30, "the cancelled job's folder to go")
    assert running.status == "cancelled" and running.files[0].status == "cancelled"
    jobs.close()
    assert not jobs.root.exists()


def test_lossy_outputs_at_the_rates_their_codecs_store(make_queue, tmp_path):
    jobs = make_queue()
    job = jobs.create({"format": "opus", "bitrate": 96, "stems": ["accompaniment"]})
    path, audio = song(tmp_path, 1.0)
    add(jobs, job, path)
    jobs.start(job)
    wait_for(lambda: finished(job), 60, "the job")
    (entry,) = job.files
    assert entry.status == "done", entry.error
    out, name = jobs.output(job, 0, "accompaniment")
    assert name == "song_accompaniment.opus" and out.suffix == ".opus"
    info = sf.info(out)
    assert info.samplerate == 48000 and abs(info.duration - 1.0) < 0.03  # Opus: 48 kHz for 44.1 kHz
    assert max(entry.peaks["accompaniment"]) == pytest.approx(0.5 * np.abs(audio).max(), rel=0.25)


def test_a_preview_separates_only_its_part(make_queue, tmp_path):
    jobs = make_queue(max_seconds=1.0)
    job = jobs.create({"start": 0.5, "duration": 0.75})
    path, audio = song(tmp_path, 3.0)  # longer than the limit, but the preview is not
    entry = add(jobs, job, path)
    assert entry.total == pytest.approx(0.75)
    jobs.start(job)
    wait_for(lambda: finished(job), 60, "the job")
    assert entry.status == "done", entry.error
    vocals, _ = sf.read(entry.outputs["vocals"], dtype="float32", always_2d=True)
    part = audio[:, RATE // 2 : RATE // 2 + round(0.75 * RATE)]
    np.testing.assert_allclose(vocals, 0.5 * part.T, atol=1e-5)
    late = jobs.create({"start": 5.0})
    with pytest.raises(JobError, match=r"^song.wav: --start 5 s is past the end \(3.0 s\)$"):
        add(jobs, late, path)


class ChannelGains(MaskModel):
    """Vocals = 0.2 × the left channel, 0.8 × the right: TTA's channel-swapped view differs,
    so the average of the views is 0.4 and 0.6."""

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        gains = torch.tensor([0.2, 0.8]).view(1, 2, 1, 1)
        return (spec * gains).unsqueeze(1)


def test_each_job_picks_tta_or_not_on_one_shared_model(tmp_path):
    model = ChannelGains()
    plain = Separator(model, device="cpu", segment=0.5, progress=False)
    tta = Separator(model, device="cpu", segment=0.5, progress=False, tta=True)
    jobs = JobQueue(plain, root=tmp_path, twin=tta)
    path, audio = song(tmp_path, 0.6)
    runs = {}
    for choice in (None, True, False):
        job = jobs.create({"tta": choice, "stems": ["vocals"]})
        add(jobs, job, path)
        jobs.start(job)
        wait_for(lambda job=job: finished(job), 60, "the job")
        runs[choice] = sf.read(job.files[0].outputs["vocals"], dtype="float32", always_2d=True)[0]
    jobs.close()
    np.testing.assert_allclose(runs[None], runs[False], atol=0)  # the server's setting: off
    np.testing.assert_allclose(runs[False], audio.T * [0.2, 0.8], atol=1e-5)
    np.testing.assert_allclose(runs[True], audio.T * [0.4, 0.6], atol=1e-5)


def test_a_picture_without_the_plot_extra_is_one_line(make_queue, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    with pytest.raises(JobError, match=r"^the spectrogram picture needs matplotlib, which is not installed: pip install 'bsmamba2\[plot\]'$"):
        make_queue().create({"picture": True})


def two_models(load) -> ModelShelf:
    """quiet (a vocals model) first, then two (drums and bass), on the CPU."""
    choices = [ModelChoice("quiet", "quiet.ckpt", "mamba2", ("vocals", "accompaniment")),
               ModelChoice("two", "two.ckpt", "mamba", ("drums", "bass"))]
    return ModelShelf(choices, load, torch.device("cpu"), tta_choice=False)


def test_each_job_names_its_model_and_each_model_loads_once(tmp_path):
    loads = []

    def load(choice):
        loads.append(choice.name)
        model = MaskModel(gain=0.25) if choice.name == "quiet" else MaskModel(n_stems=2, targets=("drums", "bass"))
        return {False: Separator(model, device="cpu", segment=0.5, progress=False)}

    jobs = JobQueue(two_models(load), root=tmp_path)
    path, audio = song(tmp_path, 0.6)
    outputs = []
    for model in (None, "two", "quiet", "two"):
        job = jobs.create({} if model is None else {"model": model})
        add(jobs, job, path)
        jobs.start(job)
        wait_for(lambda job=job: finished(job), 60, "the job")
        assert jobs.state(job)["model"] == (model or "quiet") and job.files[0].status == "done"
        outputs.append({stem: sf.read(p, dtype="float32", always_2d=True)[0] for stem, p in job.files[0].outputs.items()})
    jobs.close()
    assert loads == ["quiet", "two"]  # on first use, then shared
    for got in (outputs[0], outputs[2]):
        np.testing.assert_allclose(got["vocals"], 0.25 * audio.T, atol=1e-5)
    for got in (outputs[1], outputs[3]):
        assert list(got) == ["drums", "bass"]
        np.testing.assert_allclose(got["bass"], 2 * audio.T, atol=1e-5)  # MaskModel: stem i is (i + 1) × the input


def test_an_unknown_model_or_another_models_stem_is_refused(tmp_path):
    jobs = JobQueue(two_models(lambda choice: pytest.fail("nothing loads for a refused job")), root=tmp_path)
    with pytest.raises(JobError, match=r"^unknown model 'nope' \(this server offers: quiet, two\)$") as e:
        jobs.create({"model": "nope"})
    assert e.value.status == 400
    with pytest.raises(JobError, match=r"^unknown stem 'vocals' \(this model gives: drums, bass\)$"):
        jobs.create({"model": "two", "stems": ["vocals"]})
    with pytest.raises(JobError, match=r"^model must be a model's name, got 3$"):
        jobs.create({"model": 3})
    assert jobs.create({"model": "two", "stems": ["bass"]}).options.stems == ("bass",)
    jobs.close()
    cuda = ModelShelf(list(jobs.models.choices.values()), lambda c: {}, torch.device("cuda"))
    with pytest.raises(BSMamba2Error, match="one job at a time on cuda"):
        JobQueue(cuda, workers=2, root=tmp_path)


def test_a_model_that_fails_to_load_fails_its_files_with_one_line(tmp_path, caplog):
    def load(choice):
        raise CheckpointError(f"{choice.weights}: not a readable PyTorch checkpoint, truncated or corrupt")

    jobs = JobQueue(two_models(load), root=tmp_path)
    job = jobs.create({"model": "two"})
    add(jobs, job, song(tmp_path, 0.3)[0])
    with caplog.at_level(logging.ERROR, logger="bsmamba2.serve"):
        jobs.start(job)
        wait_for(lambda: finished(job), 60, "the job")
    (entry,) = job.files
    assert (job.status, entry.status) == ("done", "error")
    assert entry.error == "two.ckpt: not a readable PyTorch checkpoint, truncated or corrupt"
    assert entry.error in caplog.text
    jobs.close()
