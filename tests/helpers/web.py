"""The web app on a loopback port in a thread, and a small HTTP client that never raises on
an error status (for the tests of ``bsmamba2 serve``)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from bsmamba2.cli.serve import bind
from bsmamba2.web.app import LOCAL_HOSTS, create_app
from bsmamba2.web.jobs import JobQueue

CSRF = {"X-BSMamba2": "1"}


@contextmanager
def serving(jobs: JobQueue) -> Iterator[str]:
    """The app over ``jobs`` on a free port of 127.0.0.1; yields its base URL. Leaving
    stops the server, which closes ``jobs`` (its lifespan's end)."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(create_app(jobs, LOCAL_HOSTS), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the server to start")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> object:
    """Poll ``condition`` until it is true (returned) or fail after ``seconds``."""
    end = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.02)
    return result


def request(
    method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; a dict body is sent as JSON."""
    headers = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def tones(channels: int, seconds: float, rate: int, seed: int) -> np.ndarray:
    """Random tones and a little noise, (channels, samples) float32 within ±0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = [
        sum(rng.uniform(0.02, 0.08) * np.sin(2 * np.pi * rng.uniform(60, 5000) * t + rng.uniform(0, 6)) for _ in range(6))
        + rng.normal(0, 0.01, t.size)
        for _ in range(channels)
    ]
    return np.asarray(x, np.float32)
