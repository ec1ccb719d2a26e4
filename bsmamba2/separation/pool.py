"""Whole files in parallel: one worker process per device, each with its own model copy,
taking files from one shared queue, largest first (``separate -j N`` and ``--devices``).

Workers are started with the ``spawn`` method (no fork of a process that holds threads, CUDA
or open files) and each loads the model once. The CPU threads are shared out: a worker uses
``torch.get_num_threads() // workers`` of them (at least one), so N workers on a CPU do not
oversubscribe it. Each file is :func:`~bsmamba2.separation.files.run_job`, as in one process:
outputs appear only when complete, existing ones are skipped, a failing file is a report and
the others go on. The parent gets progress reports of every worker through one queue, so one
display can show them all.

Stopping: :meth:`SeparatorPool.close` after an exception (Ctrl-C, SIGTERM, an error) sends
SIGTERM to the workers, which turns into KeyboardInterrupt there, so each removes its partial
outputs as a single process does, then waits for them. Ctrl-C in a terminal reaches the workers
directly too (one process group). Outputs of one file never depend on which worker made it:
with the same threads per worker the result is the same, bit for bit, as one worker's
(PyTorch's CPU kernels split some sums by thread count, so another thread count can change
float32 rounding in the last bit).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bsmamba2.errors import BSMamba2Error, ParameterError
from bsmamba2.separation.files import FileJob, FileReport, run_job
from bsmamba2.separation.progress import ProgressCallback

_POLL = 0.5  # seconds between checks that the workers are still alive
_GRACE = 60.0  # seconds a terminated worker gets to remove its partial outputs


def largest_first(jobs: Iterable[FileJob]) -> list[FileJob]:
    """The order files are handed out: largest first (so the longest one does not start last
    and keep one worker busy alone at the end), ties by path."""

    def size(job: FileJob) -> int:
        try:
            return job.path.stat().st_size
        except OSError:
            return 0

    return sorted(jobs, key=lambda job: (-size(job), str(job.path)))


_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"
"""A ``-W`` option for multiprocessing's resource tracker process: when a stopped run's
workers exit while the queues' semaphores are being released, the tracker can count one it
was not told was unlinked, and says so on the command's stderr after the one-line message.
It removes whatever is left either way, so its warning is only noise for a stopped command."""


def _interrupt(signum: int, frame: object) -> None:
    """Stop the worker at the first SIGTERM or SIGINT and ignore the later ones, so that its
    cleanup (the partial outputs and their folders removed) runs to the end: Ctrl-C reaches
    the whole process group, and the parent then sends SIGTERM as well. (A Python handler
    that does nothing, not SIG_IGN: a signal already pending when the handler changes would
    then raise "ignored due to race condition" wherever the worker is.)"""
    signal.signal(signal.SIGTERM, _stopping)
    signal.signal(signal.SIGINT, _stopping)
    raise KeyboardInterrupt


def _stopping(signum: int, frame: object) -> None:
    """A signal to a worker that is stopping already: nothing to do."""


def _next_task(tasks: multiprocessing.Queue, parent: int) -> tuple[int, FileJob] | None:
    """The next job, or None at the end of the queue or once the parent is gone (killed: the
    worker would otherwise wait forever)."""
    while os.getppid() == parent:
        with contextlib.suppress(queue.Empty):
            return tasks.get(timeout=_POLL)
    return None


def _work(
    index: int,
    device: str,
    workers: int,
    weights: str,
    settings: dict[str, Any],
    tasks: multiprocessing.Queue,
    events: multiprocessing.Queue,
) -> None:
    """A worker: load the model once, then separate the jobs of ``tasks`` until ``None``."""
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: partial outputs are removed
    signal.signal(signal.SIGINT, _interrupt)
    try:
        import torch

        from bsmamba2.separation.separator import Separator

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                separator = Separator(weights, **{**settings, "device": device, "progress": False})
        except Exception as exc:  # a bad device or checkpoint: said in the parent, on one line
            message = str(exc) if isinstance(exc, BSMamba2Error) else f"{device}: {type(exc).__name__}: {exc}"
            events.put(("broken", index, message, getattr(exc, "parameter", None)))
            return
        said = [(str(w.message), w.filename, w.lineno) for w in caught]
        events.put(("ready", index, separator.outputs, separator.name, said))
        parent = os.getppid()
        while (task := _next_task(tasks, parent)) is not None:
            number, job = task
            events.put(("started", index, number))
            try:
                report = run_job(separator, job, lambda progress: events.put(("progress", index, progress)))
            except Exception as exc:  # not a user's error, but still this file's only
                report = FileReport(str(job.path), "failed", error=f"{job.path}: {type(exc).__name__}: {exc}")
            events.put(("done", index, number, report))
    except KeyboardInterrupt:  # stopped: the partial outputs are gone already
        return


class SeparatorPool:
    """Separate files with one worker process per entry of ``devices`` (``"cpu"`` several
    times for several CPU workers, ``"cuda:0"``, ``"cuda:1"``, ... one per GPU).

    Args:
        weights: a checkpoint path or known name (each worker loads it).
        devices: one entry per worker, as :class:`Separator`'s ``device``.
        settings: the other :class:`Separator` arguments (segment, overlap, precision, ...).

    Use it as a context manager: entering starts the workers and waits until every one has
    loaded the model (a device or checkpoint that fails is a :class:`BSMamba2Error`), leaving
    stops them. :meth:`run` separates jobs and yields a report per file as each finishes.
    """

    def __init__(self, weights: str | os.PathLike, devices: Sequence[str], **settings: Any) -> None:
        if not devices:
            raise BSMamba2Error("no devices: name at least one (e.g. cpu, cuda:0)")
        self.weights, self.devices, self.settings = str(weights), [str(d) for d in devices], settings
        self.outputs: list[str] = []
        """The stems each input gives (known once the workers are ready)."""
        self.name = Path(weights).stem
        """The model's name (the ``{model}`` template field)."""
        self.startup_warnings: list[tuple[str, str, int]] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        self._dead: set[int] = set()
        self._stopped = False

    def __enter__(self) -> SeparatorPool:
        if _QUIET_TRACKER not in sys.warnoptions:  # read when the tracker starts, with the first queue
            sys.warnoptions.append(_QUIET_TRACKER)
        context = multiprocessing.get_context("spawn")
        self._tasks, self._events = context.Queue(), context.Queue()
        try:
            for index, device in enumerate(self.devices):
                args = (index, device, len(self.devices), self.weights, self.settings)
                process = context.Process(
                    target=_work, args=(*args, self._tasks, self._events), name=f"bsmamba2-worker-{index}"
                )
                process.start()
                self._processes.append(process)
            waiting = set(range(len(self.devices)))
            while waiting:
                kind, index, *data = self._next()
                if kind == "broken":
                    message, parameter = data
                    raise ParameterError(parameter, message) if parameter else BSMamba2Error(message)
                if kind == "died":
                    raise BSMamba2Error(f"worker {index} on {self.devices[index]} died loading the model "
                                        f"(exit code {data[0]})")
                if kind == "ready":
                    self.outputs, self.name, said = data
                    self.startup_warnings += said
                    waiting.discard(index)
        except BaseException:
            self.close(abort=True)
            raise
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        self.close(abort=kind is not None)

    def stop(self) -> None:
        """Hand out no more files (the ones being separated finish): e.g. after a full disk."""
        self._stopped = True

    def _next(self) -> tuple:
        """The next message of a worker; a worker that died is a message too, ("died", index,
        exit code), once."""
        while True:
            try:
                return self._events.get(timeout=_POLL)
            except queue.Empty:
                for index, process in enumerate(self._processes):
                    if process.exitcode is not None and index not in self._dead:
                        self._dead.add(index)
                        return ("died", index, process.exitcode)

    def run(
        self, jobs: Iterable[FileJob], on_progress: ProgressCallback | None = None
    ) -> Iterator[FileReport]:
        """Separate ``jobs`` (handed out largest first), yielding each file's report as it is
        done; ``on_progress`` gets every worker's :class:`Progress`, ``file`` the input's path.
        After :meth:`stop`, or when every worker died, the jobs not started yet are reported
        "not attempted"."""
        todo = largest_first(jobs)
        waiting = list(range(len(todo)))[::-1]  # numbers into todo, the next one last
        queued: set[int] = set()
        running: dict[int, int] = {}  # worker → number
        alive = len(self._processes) - len(self._dead)
        while alive and (running or queued or (waiting and not self._stopped)):
            while waiting and not self._stopped and len(queued) < alive:
                queued.add(number := waiting.pop())
                self._tasks.put((number, todo[number]))
            kind, index, *data = self._next()
            if kind == "started":
                queued.discard(data[0])
                running[index] = data[0]
            elif kind == "progress" and on_progress is not None and index in running:
                on_progress(replace(data[0], file=str(todo[running[index]].path)))
            elif kind == "done":
                running.pop(index, None)
                yield data[1]
            elif kind == "died":
                alive -= 1
                if (number := running.pop(index, None)) is not None:
                    path = todo[number].path
                    why = f"the worker on {self.devices[index]} died (exit code {data[0]})"
                    yield FileReport(str(path), "failed", error=f"{path}: {why}")
        why = None if alive else "every worker died"
        for number in sorted(queued) + waiting[::-1]:
            yield FileReport(str(todo[number].path), "not attempted", error=why)

    def close(self, abort: bool = False) -> None:
        """Stop the workers: the end of the queue, or with ``abort`` SIGTERM (they remove
        their partial outputs); each gets :data:`_GRACE` seconds, then is killed. Their last
        messages are read meanwhile, so none blocks on a full pipe."""
        for process in self._processes:
            if process.exitcode is None:
                if abort:
                    process.terminate()
                else:
                    self._tasks.put(None)
        deadline = time.monotonic() + _GRACE
        while any(p.exitcode is None for p in self._processes) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._events.get_nowait()
            time.sleep(0.05)
        for process in self._processes:
            if process.exitcode is None:
                process.kill()
            process.join()
        if abort:
            self._tasks.cancel_join_thread()
        self._processes = []
