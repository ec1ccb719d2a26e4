"""museval access: full BSSEval v4 scores and museval's target grouping.

museval is imported through :func:`bsmamba2.errors.require` (it needs ffmpeg, see there).
"""

from __future__ import annotations

import warnings

import numpy as np

from bsmamba2.errors import require
from bsmamba2.evaluation.metrics import n_windows

METRICS = ("SDR", "SIR", "SAR", "ISR")


def target_groups(targets: list[str]) -> list[tuple[list[str], list[str]]]:
    """``(evaluated together, scored)`` target sets, as museval's ``eval_mus_track`` forms them.

    museval evaluates every target but accompaniment jointly (vocals included) and keeps all
    those scores except vocals; then vocals with accompaniment, keeping both. Without vocals,
    accompaniment is an ordinary target. Joint evaluation matters because a window silent in
    any target of a set is NaN for all of them. A lone target, which museval skips with a
    warning, is scored alone here.
    """
    pair = "vocals" in targets and "accompaniment" in targets
    together = [t for t in targets if not (pair and t == "accompaniment")]
    scored = [t for t in together if not (pair and t == "vocals")]
    groups = [(together, scored)] if scored else []
    if pair:
        groups.append((["vocals", "accompaniment"], ["vocals", "accompaniment"]))
    return groups


def museval_scores(
    references: np.ndarray, estimates: np.ndarray, window: int, hop: int
) -> tuple[dict[str, np.ndarray], str | None]:
    """SDR/SIR/SAR/ISR per window from ``museval.evaluate`` (BSSEval v4, images mode).

    ``references``/``estimates``: ``(sources, channels, samples)`` (the convention of
    :mod:`bsmamba2.evaluation.metrics`). Returns ``{metric: (sources, windows)}`` and ``None``,
    or all-NaN scores and museval's message when museval rejects the input (a reference or an
    estimate silent over the whole track).
    """
    museval = require("museval")
    ref = np.moveaxis(np.asarray(references), -1, -2)
    est = np.moveaxis(np.asarray(estimates), -1, -2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sdr, isr, sir, sar = museval.evaluate(ref, est, win=window, hop=hop)
    except ValueError as exc:
        blank = np.full((ref.shape[0], n_windows(ref.shape[1], window, hop)), np.nan)
        return {m: blank.copy() for m in METRICS}, f"museval rejected the track: {exc}"
    return {"SDR": sdr, "SIR": sir, "SAR": sar, "ISR": isr}, None
