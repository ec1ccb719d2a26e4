"""The one error type of the web app's requests."""

from __future__ import annotations

from bsmamba2.errors import BSMamba2Error


class JobError(BSMamba2Error):
    """A request the server refuses (bad option, limit exceeded, unknown job or model): one line
    for the page, and the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
