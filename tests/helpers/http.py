"""A loopback HTTP server for the download tests (the ``server`` fixture of tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

PAYLOAD = np.random.default_rng(5).bytes(3 * 1024 * 1024 + 17)


class Server:
    """Serves ``files`` (path → bytes; PAYLOAD at /weights.ckpt) with Range support, 404 for
    any other path; can cut the first transfer short or ignore ranges. ``headers`` (path →
    {name: value}) adds response headers, ``requests`` records (method, path)."""

    def __init__(self) -> None:
        self.cut_after: int | None = None
        self.honour_range = True
        self.ranges: list[str | None] = []
        self.files: dict[str, bytes] = {"/weights.ckpt": PAYLOAD}
        self.headers: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                path = self.path.split("?")[0]
                owner.requests.append(("HEAD" if head else "GET", path))
                if path not in owner.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = owner.files[path]
                if not head:
                    owner.ranges.append(self.headers.get("Range"))
                start = 0
                if owner.honour_range and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(payload):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
                else:
                    self.send_response(200)
                body = payload[start:]
                self.send_header("Content-Length", str(len(body)))
                for name, value in owner.headers.get(path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if head:
                    return
                if owner.cut_after is not None:
                    self.wfile.write(body[: owner.cut_after])
                    owner.cut_after = None
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-transfer
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.ckpt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@contextmanager
def serving() -> Iterator[Server]:
    """A running Server, shut down on exit."""
    srv = Server()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
