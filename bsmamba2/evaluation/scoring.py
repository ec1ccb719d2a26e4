"""Scores of one track: per-window BSSEval metrics and uSDR for each separated target."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bsmamba2.errors import BSMamba2Error
from bsmamba2.evaluation.bleed import bleedless_fullness
from bsmamba2.evaluation.bsseval import METRICS, museval_scores, target_groups
from bsmamba2.evaluation.metrics import framewise_sdr, match_length, median_sdr, usdr

BACKENDS = ("fast", "museval")


@dataclass
class TargetScores:
    """Per-window metrics (``{"SDR": (windows,), ...}``; the fast backend has SDR only), uSDR,
    and the mel-spectrogram scores bleedless and fullness (:mod:`.bleed`)."""

    frames: dict[str, np.ndarray]
    usdr: float
    bleedless: float = math.nan
    fullness: float = math.nan
    csdr: float = field(init=False)

    def __post_init__(self) -> None:
        self.csdr = float(median_sdr(self.frames["SDR"]))

    def median(self, metric: str) -> float:
        """Track score of ``metric``: median of its finite windows (NaN if not computed)."""
        if metric == "SDR":
            return self.csdr
        values = self.frames.get(metric)
        return float("nan") if values is None else float(median_sdr(values))


@dataclass
class TrackResult:
    """The scores of one track, plus notes on anything museval would have refused."""

    name: str
    subset: str
    targets: dict[str, TargetScores]
    notes: list[str] = field(default_factory=list)


def _silent(audio: np.ndarray) -> bool:
    """museval's test of a silent source: its channel sum is 0 at every sample."""
    return not np.any(np.sum(audio, axis=0))


def score_track(
    name: str,
    subset: str,
    references: dict[str, np.ndarray],
    estimates: dict[str, np.ndarray],
    rate: int,
    backend: str = "fast",
    device: str | torch.device | None = None,
) -> TrackResult:
    """Score ``estimates`` against ``references`` (both ``{target: (channels, samples)}``).

    Targets are scored in museval's groups (:func:`target_groups`) with 1 s windows and hop;
    estimates are cut or zero-padded to the reference length. ``backend``: ``"fast"`` (exact
    SDR only: numpy on the CPU, torch on a GPU ``device``) or ``"museval"`` (SDR/SIR/SAR/ISR
    from museval itself); uSDR, bleedless and fullness with either.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    notes = [f"no reference for estimate {t!r}: not scored" for t in estimates if t not in references]
    targets = [t for t in estimates if t in references]
    if not targets:
        raise BSMamba2Error(f"track {name!r}: no estimate matches a reference stem ({', '.join(references)})")
    window = int(rate)
    scores: dict[str, TargetScores] = {}
    for group, scored in target_groups(targets):
        refs, ests = [], []
        for target in group:
            ref, est = references[target], estimates[target]
            if ref.shape[0] != est.shape[0]:
                raise BSMamba2Error(
                    f"track {name!r}, {target}: the estimate has {est.shape[0]} channel(s), "
                    f"the reference {ref.shape[0]}"
                )
            if refs and ref.shape[-1] != refs[0].shape[-1]:
                raise BSMamba2Error(f"track {name!r}: the reference stems differ in length")
            if est.shape[-1] < ref.shape[-1]:
                short = (ref.shape[-1] - est.shape[-1]) / rate
                notes.append(
                    f"estimate {target!r} is {short:.3f} s shorter than its reference: "
                    "zero-padded at the end (as museval does)"
                )
            refs.append(ref)
            ests.append(match_length(ref, est))
            for kind, audio in (("reference", ref), ("estimate", est)):
                if _silent(audio):
                    notes.append(
                        f"{kind} {target!r} is silent over the whole track: every window is NaN "
                        "(museval refuses such a track with an error)"
                    )
        ref_stack, est_stack = np.stack(refs), np.stack(ests)
        if backend == "museval":
            frames, problem = museval_scores(ref_stack, est_stack, window, window)
            if problem:
                notes.append(problem)
        else:
            frames = {"SDR": framewise_sdr(ref_stack, est_stack, window, window, device)}
        for i, target in enumerate(group):
            if target in scored:
                per_target = {m: frames[m][i] for m in METRICS if m in frames}
                bleedless, fullness = bleedless_fullness(refs[i], ests[i], rate)
                scores[target] = TargetScores(per_target, usdr(refs[i], ests[i]), bleedless, fullness)
    ordered = {t: scores[t] for t in targets}
    return TrackResult(name, subset, ordered, list(dict.fromkeys(notes)))
