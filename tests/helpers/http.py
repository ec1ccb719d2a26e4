"""A loopback HTTP server for the download tests (the ``server`` fixture of tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

PAYLOAD = np.random.default_rng(5).bytes(3 * 1024 * 1024 + 17)


class Server:
    """Serves PAYLOAD with Range support; can cut the first transfer short or ignore ranges."""

    def __init__(self) -> None:
        self.cut_after: int | None = None
        self.honour_range = True
        self.ranges: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.ranges.append(self.headers.get("Range"))
                start = 0
                if owner.honour_range and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                    if start >= len(PAYLOAD):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
                else:
                    self.send_response(200)
                body = PAYLOAD[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
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
