"""Progress reports of a separation, for programs that show progress their own way.

A GUI or a web page passes ``on_progress`` to :meth:`Separator.separate` or
:meth:`Separator.separate_file` and gets a :class:`Progress` after each block of output,
instead of parsing tqdm's bars. The callback runs in the thread that separates; an
exception it raises stops the separation (and, like any error, removes partial outputs),
which is how a caller cancels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STAGES = ("separating", "compiling", "plotting", "done")


@dataclass(frozen=True)
class Progress:
    """Where one input stands: ``done`` of ``total`` seconds of audio, in ``stage``.

    ``file`` is the input's file name (``"audio"`` for an array); ``total`` is None for an
    input whose length is unknown (some ffmpeg streams), and grows when a length from
    ffprobe was an underestimate. ``stage`` is one of :data:`STAGES`.
    """

    file: str
    done: float
    total: float | None
    stage: str

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or None when the length is unknown."""
        if self.total is None:
            return None
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0


ProgressCallback = Callable[[Progress], None]


class ProgressReporter:
    """Counts the seconds done for one input and hands each step to the callback (if any)."""

    def __init__(self, callback: ProgressCallback | None, file: str, total: float | None) -> None:
        self.callback, self.file, self.total, self.done = callback, file, total, 0.0

    def advance(self, seconds: float) -> None:
        """``seconds`` more audio separated."""
        self.done += seconds
        if self.total is not None and self.done > self.total:
            self.total = self.done
        self.report("separating")

    def finish(self) -> None:
        """The input is done: its length is now known exactly."""
        self.total = self.done
        self.report("done")

    def report(self, stage: str) -> None:
        """Tell the callback where the input stands, in ``stage``."""
        if self.callback is not None:
            self.callback(Progress(self.file, self.done, self.total, stage))
