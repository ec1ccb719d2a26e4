"""Separating many files: one :class:`FileJob` per input, one :class:`FileReport` per job.

:func:`run_job` is the whole life of one input, the same in the command's own process and in
a worker of :class:`~bsmamba2.separation.pool.SeparatorPool`: the file is separated, or
skipped (its outputs exist), or fails with one line; a failure of one file never stops the
others (except a full disk or read-only folder, which the caller sees in ``errno``). The
report is what ``separate --json`` prints: plain data, so it crosses process boundaries.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
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


def run_job(separator: Separator, job: FileJob, on_progress: ProgressCallback | None = None) -> FileReport:
    """Separate ``job`` with ``separator``; every outcome is a report, never an exception (but
    Ctrl-C and SIGTERM, which stop everything after the partial outputs are removed)."""
    from bsmamba2.separation.separator import OutputExistsError

    start = time.perf_counter()
    report = FileReport(str(job.path), "separated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outputs = separator.separate_file(job.path, job.outdir, on_progress=on_progress, **job.options)
        except OutputExistsError as exc:
            report.status, report.error = "skipped", str(exc)
            targets = separator.output_paths(job.path, job.outdir, *naming_options(job.options))
            report.outputs = {stem: str(path) for stem, path in targets.items()}
        except (BSMamba2Error, OSError) as exc:
            report.status, report.error = "failed", str(exc)
            report.errno = exc.errno if isinstance(exc, WriteError) else None
        else:
            report.outputs = {stem: str(path) for stem, path in outputs.items()}
            report.duration, report.peaks, report.clipped = outputs.duration, outputs.peaks, outputs.clipped
    report.wall = time.perf_counter() - start
    report.warnings = [(str(w.message), w.filename, w.lineno) for w in caught]
    return report


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
