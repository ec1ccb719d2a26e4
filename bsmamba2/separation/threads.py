"""Host work beside the model: decoding ahead of it and writing behind it, in CPU threads.

A separation is a chain: decode → cut → model → overlap-add → write. On a GPU the model's
kernels run asynchronously, so the host can decode the next blocks and write the last ones
while they run, instead of between them. The decoders (libsndfile, an ffmpeg pipe), numpy's
copies and the encoders release the GIL, so these threads run beside the main thread.

Both helpers keep the chain's contract: items come out (are written) in order; an error in
a thread is raised in the main thread, as it is, at the next hand-over (so it reaches the
caller as the same one-line error, and the outputs are removed as after any error); leaving
the ``with`` block, on success or error (Ctrl-C included), stops the thread and waits for
it, so nothing touches a file after its ``with`` block is left. Each thread runs in a copy of
its creator's :mod:`contextvars` context, so what it raises meanwhile (a warning) is filed to
the file that started it (:func:`~bsmamba2.separation.files.run_jobs`).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

DEPTH = 8
"""Items a thread may be ahead (decoding) or behind (writing): a few blocks of ~1.5 s."""
_POLL = 0.05  # seconds between checks of the stop flag while a queue is full


def _thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running ``target`` in a copy of the current context."""
    return threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)


class _Raised:
    """An exception of the thread, handed to the main thread in the queue."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class Ahead(Generic[T]):
    """Iterate ``items`` in a thread, up to ``depth`` items ahead of the consumer.

    Use as a context manager; iterating it gives ``items``' items in order, then raises what
    ``items`` raised, if anything, where the consumer reached that point.
    """

    def __init__(self, items: Iterable[T], depth: int = DEPTH, name: str = "bsmamba2-decode") -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = _thread(self._produce, name)

    def __enter__(self) -> Ahead[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except Exception as exc:  # the consumer raises it
            self._put(_Raised(exc))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        while not self._done:
            item = self._queue.get()
            if item is _END:
                self._done = True
            elif isinstance(item, _Raised):
                self._done = True
                raise item.error
            else:
                yield item

    def close(self) -> None:
        """Stop the thread (it finishes the item it is decoding) and wait for it."""
        self._stop.set()
        self._thread.join()
        close = getattr(self._items, "close", None)
        if close is not None:  # a generator: its cleanup runs here, after the thread is gone
            close()


class Behind:
    """Run calls in a thread, in the order given, up to ``depth`` waiting (``submit`` blocks
    when that many are). The first error of a call stops the thread; it is raised by the
    next :meth:`submit` or by :meth:`finish`.
    """

    def __init__(self, depth: int = DEPTH, name: str = "bsmamba2-write") -> None:
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = _thread(self._consume, name)

    def __enter__(self) -> Behind:
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, *rest: object) -> None:
        if kind is None:
            self.finish()
        else:
            self.abort()

    def _consume(self) -> None:
        while True:
            try:
                call = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if call is _END:
                return
            if self._error is not None or self._stop.is_set():
                continue  # after an error or an abort: nothing more is done
            try:
                call[0](*call[1])
            except Exception as exc:
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._stop.set()
            raise error

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Queue ``call(*args)``; raises the error of an earlier call first, if there was one."""
        self._raise()
        while True:
            try:
                self._queue.put((call, args), timeout=_POLL)
                return
            except queue.Full:
                self._raise()

    def finish(self) -> None:
        """Wait for every queued call; raises the first error of one."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Drop the queued calls, wait for the one running, and stop."""
        self._stop.set()
        self._thread.join()
