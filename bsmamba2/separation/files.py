"""Separating many files: one :class:`FileJob` per input, one :class:`FileReport` per job.

:func:`run_job` is the whole life of one input, the same in the command's own process and in
a worker of :class:`~bsmamba2.separation.pool.SeparatorPool`: the file is separated, or
skipped (its outputs exist), or fails with one line; a failure of one file never stops the
others (except a full disk or read-only folder, which the caller sees in ``errno``). The
report is what ``separate --json`` prints: plain data, so it crosses process boundaries.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bsmamba2.errors import BSMamba2Error
from bsmamba2.fileio import WriteError
from bsmamba2.separation.naming import DEFAULT_TEMPLATE

if TYPE_CHECKING:
    from bsmamba2.separation.progress import ProgressCallback
    from bsmamba2.separation.separator import Separator

STATUSES = ("separated", "skipped", "failed", "not attempted")


class Step(enum.Enum):
    """Where :meth:`Separator.separate_file_steps` pauses: another file may take a turn there."""

    FIRST_BATCH = "the first batch is on the device"
    LAST_BATCH = "every batch is on the device, the last one may still run"


class SeparatedFile(dict):
    """What :meth:`Separator.separate_file` returns: {stem: path} (and ``"plot"``), with the
    ``duration`` separated (seconds), each written stem's ``peaks`` (largest absolute sample,
    full scale 1.0, before any clipping) and the stems ``clipped`` in an integer or lossy file."""

    def __init__(
        self, paths: dict[str, Path], duration: float, peaks: dict[str, float], clipped: Sequence[str]
    ) -> None:
        super().__init__(paths)
        self.duration, self.peaks, self.clipped = duration, dict(peaks), list(clipped)


@dataclass(frozen=True)
class FileJob:
    """One input to separate into ``outdir``; ``options`` are :meth:`Separator.separate_file`'s
    keyword arguments (stems, filename, fmt, bit_depth, ...)."""

    path: Path
    outdir: Path
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FileReport:
    """How one input went. ``status`` is one of :data:`STATUSES`; ``error`` the one-line reason
    of a skip or failure; ``errno`` the system's reason of a failed write; ``warnings``
    (message, file, line) raised meanwhile, for the caller to show as its own."""

    input: str
    status: str
    outputs: dict[str, str] = field(default_factory=dict)
    duration: float | None = None
    wall: float = 0.0
    peaks: dict[str, float] = field(default_factory=dict)
    clipped: list[str] = field(default_factory=list)
    error: str | None = None
    errno: int | None = None
    warnings: list[tuple[str, str, int]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The JSON line of ``separate --json``: input, status, outputs (stem → path), duration
        and wall time in seconds, × real time, peak per stem (linear and dBFS), clipped, error."""
        return {
            "input": self.input,
            "status": self.status,
            "outputs": self.outputs,
            "duration_s": None if self.duration is None else round(self.duration, 6),
            "wall_s": round(self.wall, 6),
            "x_realtime": round(self.duration / self.wall, 4) if self.duration and self.wall else None,
            "peak": {stem: round(p, 6) for stem, p in self.peaks.items()},
            "peak_dbfs": {stem: _dbfs(p) for stem, p in self.peaks.items()},
            "clipped": bool(self.clipped),
            "clipped_stems": self.clipped,
            "error": self.error,
        }


def _dbfs(peak: float) -> float | None:
    return round(20 * math.log10(peak), 2) if peak > 0 else None


_OWNER: contextvars.ContextVar[list[tuple[str, str, int]] | None] = contextvars.ContextVar(
    "bsmamba2_warnings_of", default=None
)
"""The list of (message, file, line) that a warning raised in this context belongs to: the
file whose step runs, or whose reading or writing thread runs (they copy its context)."""


@contextlib.contextmanager
def _warnings_by_file() -> Iterator[None]:
    """Every warning raised inside goes to its file's list (:data:`_OWNER`), none shown; one
    outside any file is shown as usual. One capture for all the files: ``catch_warnings``
    swaps module-wide state, so one per file would undo another's while two files overlap."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def file_it(message, category, filename, lineno, file=None, line=None) -> None:
            owner = _OWNER.get()
            if owner is None:
                shown(message, category, filename, lineno, file, line)
            else:
                owner.append((str(message), filename, lineno))

        warnings.showwarning = file_it
        yield


class _Run:
    """One job's file on its way: its steps (:meth:`Separator.separate_file_steps`), its report."""

    def __init__(self, separator: Separator, job: FileJob, on_progress: ProgressCallback | None) -> None:
        self.separator, self.job = separator, job
        self.start = time.perf_counter()
        self.report = FileReport(str(job.path), "separated")
        self.steps = separator.separate_file_steps(
            job.path, job.outdir, on_progress=on_progress, **job.options
        )
        self.done = False

    def advance(self, *marks: Step) -> bool:
        """Run the file up to the first of ``marks`` it reaches (none: to its end); whether it
        is done (separated, skipped or failed: :attr:`report` says which)."""
        from bsmamba2.separation.separator import OutputExistsError

        token = _OWNER.set(self.report.warnings)
        try:
            while next(self.steps) not in marks:
                pass
            return False
        except StopIteration as end:
            outputs = end.value
            self.report.outputs = {stem: str(path) for stem, path in outputs.items()}
            self.report.duration, self.report.peaks = outputs.duration, outputs.peaks
            self.report.clipped = outputs.clipped
        except OutputExistsError as exc:
            self.report.status, self.report.error = "skipped", str(exc)
            job = self.job
            targets = self.separator.output_paths(job.path, job.outdir, *naming_options(job.options))
            self.report.outputs = {stem: str(path) for stem, path in targets.items()}
        except (BSMamba2Error, OSError) as exc:
            self.report.status, self.report.error = "failed", str(exc)
            self.report.errno = exc.errno if isinstance(exc, WriteError) else None
        finally:
            _OWNER.reset(token)
        self.report.wall = time.perf_counter() - self.start
        self.done = True
        return True

    def close(self) -> None:
        """Stop it where it is: its partial outputs are removed, its threads stopped."""
        self.steps.close()


def run_jobs(
    separator: Separator,
    jobs: Iterable[FileJob],
    on_progress: ProgressCallback | None = None,
    overlap: bool | None = None,
) -> Iterator[FileReport]:
    """Separate ``jobs`` one after the other with ``separator``, each file's report yielded in
    their order; every outcome is a report, never an exception (but Ctrl-C and SIGTERM, which
    stop everything after the partial outputs of the files in progress are removed).

    With ``overlap`` (None: on CUDA, where the model runs while the host works; on the CPU
    the model and the host share the cores, so it would only hold a file's outputs back) the
    files overlap where the device would wait: once a file's last batch is started, the next
    file is opened, read and cut until its first batch is started too (queued behind the last
    one), and only then is the first file finished (its last batch added, written, its
    outputs renamed into place); so the device goes from one file to the next without a gap.
    Each file stays whole on its own: outputs appear when complete, a failure removes only
    that file's, its report has its own warnings; its ``wall`` overlaps its neighbours'.
    Leaving the generator early (``close``) removes the outputs of the files in progress.
    """
    if overlap is None:
        overlap = separator.device.type == "cuda"
    head, tail = ((Step.FIRST_BATCH, Step.LAST_BATCH), (Step.LAST_BATCH,)) if overlap else ((), ())
    with _warnings_by_file():
        live: list[_Run] = []  # at most two: the previous file (its tail to come) and this one
        try:
            for job in jobs:
                live.append(_Run(separator, job, on_progress))
                live[-1].advance(*head)
                if len(live) == 2:  # the previous file's tail, behind this one's first batch
                    live[0].advance()
                    yield live.pop(0).report
                if live[0].done or live[0].advance(*tail):
                    yield live.pop().report
            if live:
                live[0].advance()
                yield live.pop().report
        finally:  # Ctrl-C, or the caller stopped: the files in progress leave nothing
            for run in live:
                run.close()


def run_job(separator: Separator, job: FileJob, on_progress: ProgressCallback | None = None) -> FileReport:
    """One job through :func:`run_jobs`: its report, never an exception (but Ctrl-C and
    SIGTERM, which stop it after its partial outputs are removed)."""
    return next(iter(run_jobs(separator, [job], on_progress)))


def naming_options(options: dict[str, Any]) -> tuple:
    """The arguments of :meth:`Separator.output_paths` among ``separate_file``'s options."""
    return options.get("stems"), options.get("filename", DEFAULT_TEMPLATE), options.get("fmt", "wav")


def replay_warnings(said: Sequence[tuple[str, str, int]], show: Callable[[], Any]) -> None:
    """Raise warnings caught elsewhere (a report's, (message, file, line) each) again inside
    ``show()`` (a context such as the command's ``reported_warnings``), as if they happened
    here: they are shown the same way either way."""
    with show():
        for message, filename, lineno in said:
            warnings.warn_explicit(message, UserWarning, filename, lineno)
