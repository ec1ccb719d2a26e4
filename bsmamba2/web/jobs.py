"""The job queue behind ``bsmamba2 serve``: uploads, separation in worker threads, clean-up.

A :class:`Job` is one press of *Separate*: its own temporary folder holding the uploads
(saved as ``input-N.<suffix>``, never under the name the browser sent) and the stems, and
the state the page polls. :class:`JobQueue` shares the models of a
:class:`~bsmamba2.web.models.ModelShelf` (each loaded on first use; each job names its model)
between its worker threads (one on a GPU, as many as configured on the CPU), enforces the
upload limits, reports per-file progress from the Separator's ``on_progress`` callback, and
removes each job's folder when its zip was downloaded, when the user deletes it, when its
retention time is over, or when the server stops. Nothing here knows about HTTP.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
import unicodedata
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np
import soundfile as sf
import torch

from bsmamba2.audio import open_audio, subtype_for
from bsmamba2.audio.io import AUDIO_SUFFIXES, FORMATS, compression_level
from bsmamba2.errors import BSMamba2Error, require_extra
from bsmamba2.separation import Progress, Separator
from bsmamba2.web.errors import JobError
from bsmamba2.web.models import ModelShelf

log = logging.getLogger("bsmamba2.serve")

PEAK_POINTS = 600  # bars in a stem's waveform picture


class Cancelled(Exception):
    """Raised from the progress callback when the job was deleted while it ran."""


@dataclass(frozen=True)
class Limits:
    """What one job may bring and how long its files stay (seconds)."""

    max_bytes: int = 500 * 2**20  # per uploaded file
    max_seconds: float = 30 * 60.0  # of audio per file
    max_files: int = 20  # per job
    keep_seconds: float = 3600.0  # after the job finished (or was created, if never started)


def display_name(name: str) -> str:
    """The browser's file name reduced to something safe to show and to offer for download:
    no folders (either slash), no control characters, at most 120 characters (the suffix kept)."""
    base = PureWindowsPath(name).name  # splits on / and \\
    base = "".join(c for c in unicodedata.normalize("NFC", base) if unicodedata.category(c)[0] != "C")
    base = base.strip().strip(".") or "audio"
    if len(base) > 120:
        suffix = Path(base).suffix[:10]
        base = base[: 120 - len(suffix)] + suffix
    return base


def track_name(name: str) -> str:
    """A display name without its suffix, for download names and zip folders."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return re.sub(r'[<>:"/\\|?*]', "_", stem).strip() or "audio"


@dataclass(frozen=True)
class Options:
    """What the user picked on the page for every file of a job."""

    stems: tuple[str, ...]
    fmt: str = "wav"
    bit_depth: str | None = None
    bitrate: int | None = None  # kbps, MP3 and Opus
    picture: bool = False
    start: float = 0.0  # a preview: seconds from ``start`` on, ``duration`` long (None: to the end)
    duration: float | None = None
    tta: bool | None = None  # None: the server's setting
    model: str = ""  # the name of the model that separates (ModelShelf)

    @classmethod
    def parse(cls, raw: dict, models: ModelShelf) -> Options:
        """Options from the page's JSON, checked against the models, the chosen model's stems
        and the formats."""
        model = raw.get("model", models.default)
        if not isinstance(model, str):
            raise JobError(f"model must be a model's name, got {model!r}")
        outputs = models.choice(model).outputs
        stems = raw.get("stems", list(outputs))
        if not isinstance(stems, list) or not all(isinstance(s, str) for s in stems):
            raise JobError("stems must be a list of names")
        if not stems:
            raise JobError("choose at least one stem")
        unknown = [s for s in stems if s not in outputs]
        if unknown:
            raise JobError(f"unknown stem {unknown[0]!r} (this model gives: {', '.join(outputs)})")
        fmt = raw.get("format", "wav")
        if fmt not in FORMATS:
            raise JobError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
        bit_depth, bitrate = raw.get("bit_depth") or None, raw.get("bitrate") or None
        if bitrate is not None and not isinstance(bitrate, int):
            raise JobError(f"bitrate must be a whole number of kbps, got {bitrate!r}")
        try:
            subtype_for(fmt, bit_depth)
            compression_level(fmt, bitrate, 48000, 2)  # the rate and channels of each file decide later
        except BSMamba2Error as exc:
            raise JobError(str(exc).replace("--", "")) from None
        start, duration = raw.get("start") or 0.0, raw.get("duration")
        if not _is_number(start) or start < 0:
            raise JobError(f"preview start must be 0 or more seconds, got {start!r}")
        if duration is not None and not (_is_number(duration) and duration > 0):
            raise JobError(f"preview duration must be more than 0 seconds, got {duration!r}")
        tta = raw.get("tta")
        if tta not in (None, True, False):
            raise JobError(f"tta must be true or false, got {tta!r}")
        if tta is not None and tta != models.tta and not models.tta_choice:
            raise JobError(f"this server runs with TTA {'on' if models.tta else 'off'} only")
        picture = bool(raw.get("picture", False))
        if picture:
            try:
                require_extra("the spectrogram picture", "plot")
            except BSMamba2Error as exc:
                raise JobError(str(exc)) from None
        duration = None if duration is None else float(duration)
        return cls(tuple(dict.fromkeys(stems)), fmt, bit_depth, bitrate, picture, float(start), duration, tta,
                   model)


def _is_number(value: object) -> bool:
    """Whether a JSON value is a finite number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class InputFile:
    """One uploaded file of a job and how far it got."""

    index: int
    name: str  # display name only; the file on disk is ``path``
    path: Path
    status: str = "waiting"  # waiting, separating, done, error, cancelled
    stage: str = ""
    done: float = 0.0
    total: float | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)
    picture: Path | None = None
    peaks: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the separation

    def state(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "status": self.status,
            "stage": self.stage,
            "done": round(self.done, 2),
            "total": None if self.total is None else round(self.total, 2),
            "error": self.error,
            "notes": self.notes,
            "stems": list(self.outputs),
            "picture": self.picture is not None,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class Job:
    """One press of *Separate*: options, files, state, and the folder that holds everything."""

    id: str
    folder: Path
    options: Options
    created: float
    files: list[InputFile] = field(default_factory=list)
    status: str = "uploading"  # uploading, queued, running, done, cancelled
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    uploads: itertools.count = field(default_factory=itertools.count)  # names the files on disk

    def file(self, index: int) -> InputFile:
        if not 0 <= index < len(self.files):
            raise JobError("no such file in this job", 404)
        return self.files[index]


class Upload:
    """An upload being received: bytes go straight into the job's folder, within the size limit."""

    def __init__(self, jobs: JobQueue, job: Job, name: str) -> None:
        self.jobs, self.job, self.name = jobs, job, display_name(name)
        suffix = Path(self.name).suffix.lower()
        if suffix not in AUDIO_SUFFIXES:
            raise JobError(
                f"{self.name}: not an audio file name bsmamba2 reads ({' '.join(sorted(AUDIO_SUFFIXES))})"
            )
        if len(job.files) >= jobs.limits.max_files:
            raise JobError(f"at most {jobs.limits.max_files} files per job (--max-files)", 413)
        self.path = job.folder / f"input-{next(job.uploads)}{suffix}"
        self.size = 0
        self._handle = self.path.open("xb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.jobs.limits.max_bytes:
            self.discard()
            raise JobError(
                f"{self.name}: larger than the server's limit of {self.jobs.limits.max_bytes / 2**20:.3g} MB "
                "(--max-upload-mb)",
                413,
            )
        self._handle.write(chunk)

    def discard(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)

    def finish(self) -> InputFile:
        """Close the file and check it is audio within the duration limit; a bad file is
        removed and refused with one line."""
        self._handle.close()
        options = self.job.options
        try:
            with open_audio(self.path, options.start, options.duration) as source:
                seconds = source.duration  # of the part to separate
        except BSMamba2Error as exc:
            self.path.unlink(missing_ok=True)
            raise JobError(self.jobs.scrub(str(exc), self.path, self.name)) from None
        if seconds is not None and seconds > self.jobs.limits.max_seconds:
            self.path.unlink(missing_ok=True)
            raise JobError(self.jobs.too_long(self.name, seconds), 413)
        with self.jobs.lock:
            if len(self.job.files) >= self.jobs.limits.max_files:
                self.path.unlink(missing_ok=True)
                raise JobError(f"at most {self.jobs.limits.max_files} files per job (--max-files)", 413)
            entry = InputFile(len(self.job.files), self.name, self.path, total=seconds)
            self.job.files.append(entry)
        return entry


class JobQueue:
    """Jobs of one server: the models of a :class:`~bsmamba2.web.models.ModelShelf` (or one
    loaded :class:`Separator`), ``workers`` threads (1 on a GPU).

    ``twin``, with a Separator, is one of the same model with the other ``tta`` setting, for
    the jobs that ask for it.
    """

    def __init__(
        self,
        models: ModelShelf | Separator,
        limits: Limits = Limits(),
        workers: int = 1,
        root: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        twin: Separator | None = None,
    ) -> None:
        if workers < 1:
            raise BSMamba2Error(f"--jobs must be at least 1, got {workers}")
        if isinstance(models, Separator):
            models = ModelShelf.of(models, twin)
        if models.device.type != "cpu" and workers > 1:
            raise BSMamba2Error(f"one job at a time on {models.device}: --jobs applies to the CPU only")
        self.models, self.limits, self.clock = models, limits, clock
        if root is not None:
            Path(root).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="bsmamba2-serve-", dir=root))
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._line: list[str] = []  # ids of queued jobs, oldest first
        self._workers = [
            threading.Thread(target=self._work, name=f"bsmamba2-job-{i}", daemon=True) for i in range(workers)
        ]
        self._stop = threading.Event()
        self._workers.append(threading.Thread(target=self._janitor, name="bsmamba2-janitor", daemon=True))
        for worker in self._workers:
            worker.start()

    # -- jobs -------------------------------------------------------------------------------

    def create(self, raw_options: dict) -> Job:
        options = Options.parse(raw_options, self.models)
        job_id = secrets.token_urlsafe(12)
        folder = self.root / job_id
        folder.mkdir()
        job = Job(job_id, folder, options, self.clock())
        with self.lock:
            self.jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise JobError("no such job (jobs are removed after their download or retention time)", 404)
        return job

    def upload(self, job: Job, name: str) -> Upload:
        if job.status != "uploading":
            raise JobError("this job has started: files can no longer be added", 409)
        return Upload(self, job, name)

    def start(self, job: Job) -> None:
        with self.lock:
            if job.status != "uploading":
                raise JobError("this job has already started", 409)
            if not job.files:
                raise JobError("no audio files in this job")
            job.status = "queued"
            self._line.append(job.id)
        log.info("job %s: queued, %d file(s)", job.id, len(job.files))
        self._waiting.put(job)

    def position(self, job: Job) -> int:
        """Jobs ahead of ``job`` in the queue (0 when it is next or running)."""
        with self.lock:
            return self._line.index(job.id) if job.id in self._line else 0

    def remove(self, job: Job, why: str) -> None:
        """Forget the job and delete its folder; a running job stops at its next block."""
        with self.lock:
            job.cancel.set()
            self.jobs.pop(job.id, None)
            if job.id in self._line:
                self._line.remove(job.id)
            if job.status in ("uploading", "queued"):
                job.status = "cancelled"
            running = job.status == "running"  # then its worker removes the folder when it stops
        if not running:
            shutil.rmtree(job.folder, ignore_errors=True)
        log.info("job %s: removed (%s)", job.id, why)

    def expire(self) -> list[str]:
        """Remove the jobs whose retention time is over; returns their ids."""
        now = self.clock()
        with self.lock:
            old = [
                job
                for job in self.jobs.values()
                if job.status != "running" and now - (job.finished or job.created) > self.limits.keep_seconds
            ]
        for job in old:
            self.remove(job, "retention time over")
        return [job.id for job in old]

    def close(self) -> None:
        """Stop the workers (a running job stops at its next block) and delete every job's folder."""
        with self.lock:
            jobs = list(self.jobs.values())
        for job in jobs:
            job.cancel.set()
        self._stop.set()
        for _ in self._workers:
            self._waiting.put(None)
        for worker in self._workers:
            worker.join()
        shutil.rmtree(self.root, ignore_errors=True)

    def state(self, job: Job) -> dict:
        return {
            "id": job.id,
            "model": job.options.model,
            "status": job.status,
            "ahead": self.position(job),
            "files": [f.state() for f in job.files],
        }

    # -- messages ---------------------------------------------------------------------------

    @staticmethod
    def scrub(message: str, path: Path, name: str) -> str:
        """A message about a server-side file, naming the user's file instead (one line)."""
        return " ".join(message.replace(str(path), name).split())

    def too_long(self, name: str, seconds: float | None) -> str:
        """The limit message; ``seconds`` None for a stream found too long while it runs."""
        amount = "" if seconds is None else f" {_duration(seconds)} is"
        limit = _duration(self.limits.max_seconds)
        return f"{name}:{amount} longer than the server's limit of {limit} (--max-minutes)"

    # -- the workers ------------------------------------------------------------------------

    def _janitor(self) -> None:
        while not self._stop.wait(min(60.0, self.limits.keep_seconds / 4)):
            self.expire()

    def _work(self) -> None:
        while (job := self._waiting.get()) is not None:
            with self.lock:
                if job.id in self._line:
                    self._line.remove(job.id)
                if job.cancel.is_set():
                    continue
                job.status = "running"
            try:
                for entry in job.files:
                    if job.cancel.is_set():
                        entry.status = "cancelled"
                        continue
                    self._separate(job, entry)
            finally:
                with self.lock:
                    job.finished = self.clock()
                    job.status = "cancelled" if job.cancel.is_set() else "done"
                if job.status == "cancelled":
                    shutil.rmtree(job.folder, ignore_errors=True)

    def _separate(self, job: Job, entry: InputFile) -> None:
        """One file of a job; every failure becomes ``entry.error``, one line, also logged."""
        options = job.options

        def progress(report: Progress) -> None:
            if job.cancel.is_set():
                raise Cancelled
            if report.done > self.limits.max_seconds:  # lengths of some streams are unknown up front
                raise BSMamba2Error(self.too_long(entry.name, None))
            entry.stage, entry.done, entry.total = report.stage, report.done, report.total

        entry.status = "separating"
        outdir = job.folder / f"output-{entry.index}"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if not self.models.is_loaded(options.model):
                    entry.stage = "loading the model"
                separator = self.models.separator(options.model, options.tta)
                start = time.perf_counter()  # the separation's own time, without the loading
                paths = separator.separate_file(
                    entry.path,
                    outdir,
                    stems=list(options.stems),
                    filename="{stem}.{ext}",
                    fmt=options.fmt,
                    bit_depth=options.bit_depth,
                    bitrate=options.bitrate,
                    plot=options.picture,
                    start=options.start,
                    duration=options.duration,
                    on_progress=progress,
                )
            entry.notes = [self.scrub(str(w.message), entry.path, entry.name) for w in caught]
            entry.picture = paths.pop("plot", None)
            entry.peaks = {stem: waveform_peaks(path) for stem, path in paths.items()}
            entry.outputs = paths
        except Cancelled:
            entry.status = "cancelled"
            return
        except (BSMamba2Error, OSError) as exc:
            self._fail(job, entry, self.scrub(str(exc), entry.path, entry.name))
            return
        except (MemoryError, torch.OutOfMemoryError):
            self._fail(job, entry, f"{entry.name}: out of memory (try a shorter file or a smaller --segment)")
            return
        except Exception as exc:  # a bug: the page gets one line, the server log the traceback
            log.exception("job %s: %s: unexpected error", job.id, entry.name)
            self._fail(job, entry, f"{entry.name}: internal error ({type(exc).__name__}: {exc})", logged=True)
            return
        entry.seconds = time.perf_counter() - start
        entry.status = "done"
        for note in entry.notes:
            log.warning("job %s: %s", job.id, note)
        log.info(
            "job %s: %s: %.1f s of audio in %.1f s (%.2fx real time)",
            job.id,
            entry.name,
            entry.done,
            entry.seconds,
            entry.done / max(entry.seconds, 1e-9),
        )

    @staticmethod
    def _fail(job: Job, entry: InputFile, message: str, logged: bool = False) -> None:
        entry.status, entry.error = "error", " ".join(message.split())
        if not logged:
            log.error("job %s: %s", job.id, entry.error)

    # -- results ----------------------------------------------------------------------------

    def output(self, job: Job, index: int, stem: str) -> tuple[Path, str]:
        """(path on the server, download name) of one stem of one file."""
        entry = job.file(index)
        if stem not in entry.outputs:
            raise JobError("no such stem for this file", 404)
        return entry.outputs[stem], f"{track_name(entry.name)}_{stem}.{job.options.fmt}"

    def archive(self, job: Job) -> tuple[Path, str]:
        """A zip of every stem of every finished file: ``<track>/<stem>.<ext>`` inside."""
        done = [entry for entry in job.files if entry.outputs]
        if job.status != "done" or not done:
            raise JobError("nothing to download yet", 409)
        path = job.folder / "stems.zip"
        if not path.exists():
            part = path.with_suffix(".part")
            seen: dict[str, int] = {}
            with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as archive:  # audio hardly compresses
                for entry in done:
                    folder = track_name(entry.name)
                    seen[folder] = seen.get(folder, 0) + 1
                    if seen[folder] > 1:
                        folder = f"{folder} ({seen[folder]})"
                    for stem, stem_path in entry.outputs.items():
                        archive.write(stem_path, f"{folder}/{stem}.{job.options.fmt}")
            part.replace(path)
        first = track_name(done[0].name)
        return path, f"{first}_stems.zip" if len(done) == 1 else "bsmamba2_stems.zip"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def waveform_peaks(path: Path, points: int = PEAK_POINTS) -> list[float]:
    """The loudest absolute sample (all channels) in each of ``points`` equal stretches of a
    file, read block by block: the bars of the page's waveform picture."""
    with sf.SoundFile(path) as handle:
        step = max(1, math.ceil(handle.frames / points))
        peaks: list[np.ndarray] = []
        blocksize = step * max(1, (1 << 18) // step)  # whole stretches, about 256k samples
        for block in handle.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
            loudest = np.abs(block).max(axis=1)
            peaks.append(np.maximum.reduceat(loudest, np.arange(0, len(loudest), step)))
    return [round(float(p), 4) for p in np.concatenate(peaks)] if peaks else []
