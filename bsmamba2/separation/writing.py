"""A file's outputs written beside the model, each in its own thread.

The stems of a block are independent files: one thread each writes them at the same time
(numpy's copies, libsndfile's encoders and the system's writes release the GIL), and each
thread finishes its file (libsndfile's header and its sync to disk, the slow part of the end)
as soon as its last block is written, while the others still write. Only the renames into
place wait for every file: :class:`Outputs` never moves one into place while another can
still fail, as a failure removes all of them (the writers' contexts, :func:`audio_writer`).

Each thread writes its blocks in the order given (:class:`~.threads.Behind`); an error in one
is raised in the main thread at the next hand-over, or by :meth:`Outputs.finish`.
"""

from __future__ import annotations

import numpy as np

from bsmamba2.audio.io import AudioWriter
from bsmamba2.separation.plot import SpectrogramSketch
from bsmamba2.separation.threads import Behind

MIXTURE = "mixture"
"""The sketch of the input (``plot=True``), drawn in a thread of its own."""


class Outputs:
    """The writing threads of one file: one per output (and one for the mixture's sketch).

    Args:
        writers: {stem: open writer}; closed here, renamed into place by their contexts.
        sketches: {stem or :data:`MIXTURE`: sketch} for the plot (empty: no plot).

    Use as a context manager around the blocks' hand-over: leaving it normally finishes every
    file (:meth:`finish`); leaving it on an error (Ctrl-C included) stops every thread, and
    waits for them, before the error goes on to remove the files.
    """

    def __init__(self, writers: dict[str, AudioWriter], sketches: dict[str, SpectrogramSketch]) -> None:
        self.writers, self.sketches = writers, sketches
        self._threads = {name: Behind(name=f"bsmamba2-write-{name}") for name in {**writers, **sketches}}

    def __enter__(self) -> Outputs:
        for thread in self._threads.values():
            thread.__enter__()
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        if kind is None:
            self.finish()
        else:
            self._abort()

    def write(self, mix: np.ndarray, stems: dict[str, np.ndarray]) -> None:
        """Hand one block of every output (and of the sketches) to its thread."""
        for name, thread in self._threads.items():
            thread.submit(self._write, name, mix if name == MIXTURE else stems[name])

    def _write(self, name: str, block: np.ndarray) -> None:
        if name in self.writers:
            self.writers[name].write(block)
        if name in self.sketches:
            self.sketches[name].update(block)

    def finish(self) -> None:
        """Each file finished by its thread after its last block; waits for all of them, then
        raises the first error of any."""
        try:
            for name, writer in self.writers.items():
                self._threads[name].submit(writer.close)
        except BaseException:  # an earlier error of one thread: all stop
            self._abort()
            raise
        errors = []
        for thread in self._threads.values():
            try:
                thread.finish()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _abort(self) -> None:
        for thread in self._threads.values():
            thread.abort()
