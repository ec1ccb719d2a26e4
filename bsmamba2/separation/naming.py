"""Where the stems of a track go: ``--filename`` templates under the output folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bsmamba2.errors import BSMamba2Error

ACCOMPANIMENT = "accompaniment"
"""The stem a one-stem model adds: the mixture minus its stem."""
DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"
FIELDS = "{track} {stem} {ext} {model}"


def output_names(stems: Sequence[str]) -> list[str]:
    """What a separation gives for a model's ``stems``: those, plus the accompaniment for a
    one-stem model."""
    return [*stems, ACCOMPANIMENT] if len(stems) == 1 else list(stems)


def output_paths(
    path: str | os.PathLike,
    outdir: str | os.PathLike,
    outputs: Sequence[str],
    model: str,
    stems: Sequence[str] | None = None,
    filename: str = DEFAULT_TEMPLATE,
    fmt: str = "wav",
) -> dict[str, Path]:
    """{stem: path} for the input ``path``: ``filename`` (a template with the fields
    ``{track} {stem} {ext} {model}``) under ``outdir``, for the ``stems`` chosen among the
    model's ``outputs`` (default: all of them)."""
    chosen = list(stems) if stems else list(outputs)
    unknown = [s for s in chosen if s not in outputs]
    if unknown:
        raise BSMamba2Error(f"unknown stem {unknown[0]!r} (this model gives: {', '.join(outputs)})")
    paths = {}
    for stem in dict.fromkeys(chosen):
        fields = {"track": Path(path).stem, "stem": stem, "ext": fmt, "model": model}
        try:
            paths[stem] = Path(outdir) / filename.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise BSMamba2Error(
                f"bad --filename template {filename!r} ({type(exc).__name__}: {exc}); fields: {FIELDS}, "
                "and on the command line {dir} {trackext}"
            ) from None
    if len(set(paths.values())) < len(paths):
        raise BSMamba2Error(f"--filename template {filename!r} gives every stem the same file; add {{stem}}")
    return paths
