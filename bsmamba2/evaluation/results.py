"""Evaluation outputs: museval per-track JSON, summary JSON/CSV, printed table, plot.

Per-track files are in museval's format at ``{out}/{subset}/{track}.json`` (what its
``TrackStore`` writes: per target, per 1 s frame, SDR/SIR/SAR/ISR rounded to 1e-5, ±inf as
NaN), so ``museval.EvalStore().add_eval_dir(out)`` and museval's aggregation read them.
They are written here rather than through ``TrackStore`` because importing museval needs
ffmpeg, which scoring MUSDB18-HQ's WAV folders does not. Metrics the fast backend does not
compute (SIR/SAR/ISR) are NaN there. Extra scores (uSDR, the unrounded cSDR, notes) go under
the key ``"bsmamba2"``, which museval ignores.
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bsmamba2.errors import require_extra
from bsmamba2.evaluation.bsseval import METRICS
from bsmamba2.evaluation.scoring import TargetScores, TrackResult
from bsmamba2.fileio import atomic_write_text

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
PLOT_PNG = "scores.png"


def track_path(out: Path, subset: str, name: str) -> Path:
    """Where museval keeps the scores of a track."""
    return out / subset / f"{name}.json"


#: Our per-target scores in a track's JSON (under "bsmamba2"), by the attribute's name.
_OURS = ("cSDR", "uSDR", "bleedless", "fullness")


def _museval_value(value: float) -> float:
    """A per-frame value as museval stores it: rounded to 1e-5, ±inf as NaN."""
    return round(float(value), 5) if math.isfinite(value) else math.nan


def write_track(out: Path, result: TrackResult, extra: dict[str, Any]) -> Path:
    """Save ``result`` in museval's per-track JSON format (1 s frames), with our extras."""
    targets = []
    for target, scores in result.targets.items():
        n = len(scores.frames["SDR"])
        values = {m: scores.frames.get(m, np.full(n, np.nan)) for m in METRICS}
        frames = [
            {"time": float(i), "duration": 1.0, "metrics": {m: _museval_value(values[m][i]) for m in METRICS}}
            for i in range(n)
        ]
        targets.append({"name": target, "frames": frames})
    scores = {"targets": targets, "museval_version": _museval_version()}
    scores["bsmamba2"] = {
        **extra,
        **{key: {t: getattr(s, key.lower()) for t, s in result.targets.items()} for key in _OURS},
        "notes": result.notes,
    }
    path = track_path(out, result.subset, result.name)
    atomic_write_text(path, json.dumps(scores, indent=2))
    return path


def _museval_version() -> str:
    """The installed museval's version (without importing it: that needs ffmpeg)."""
    try:
        return importlib.metadata.version("museval")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_track(path: Path, subset: str) -> tuple[TrackResult, dict[str, Any]]:
    """A result saved by :func:`write_track`, and the settings it was computed with."""
    data = json.loads(path.read_text())
    ours = data.get("bsmamba2", {})
    if any(key not in ours for key in _OURS):
        raise KeyError(f"{path} lacks some of {_OURS} (an older version wrote it)")
    targets = {}
    for target in data["targets"]:
        name = target["name"]
        frames = {
            m: np.array([float(f["metrics"].get(m, math.nan)) for f in target["frames"]]) for m in METRICS
        }
        value = {key: float(ours[key].get(name, math.nan)) for key in _OURS}
        scores = TargetScores(frames, value["uSDR"], value["bleedless"], value["fullness"])
        scores.csdr = value["cSDR"]
        targets[name] = scores
    result = TrackResult(path.stem, subset, targets, list(ours.get("notes", [])))
    return result, {k: v for k, v in ours.items() if k not in (*_OURS, "notes")}


def _stat(values: list[float], how: str) -> float:
    """nan-aware median/mean (as pandas in museval's EvalStore); NaN when nothing is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan
    return float(np.median(finite) if how == "median" else np.mean(finite))


def _metrics(results: list[TrackResult]) -> list[str]:
    """SDR, uSDR, bleedless and fullness, plus SIR/SAR/ISR where some track has them (museval
    backend)."""
    extra = [
        m
        for m in METRICS[1:]
        if any(np.isfinite(s.frames.get(m, np.array([]))).any() for r in results for s in r.targets.values())
    ]
    return ["SDR", "uSDR", "bleedless", "fullness", *extra]


def _value(scores: TargetScores, metric: str) -> float:
    if metric in ("uSDR", "bleedless", "fullness"):
        return getattr(scores, metric.lower())
    return scores.median(metric)


def summarize(
    results: list[TrackResult], settings: dict[str, Any], missing: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Per-track scores and, per target, their median and mean over tracks.

    ``SDR`` is museval's (cSDR): per track the median over 1 s windows; ``uSDR`` the
    whole-track SDR. Papers report the median over tracks of cSDR and the mean of uSDR.
    ``missing``: tracks expected but not scored (no estimates), counted in ``expected``.
    """
    metrics = _metrics(results)
    targets = list(dict.fromkeys(t for r in results for t in r.targets))
    aggregate = {}
    for target in targets:
        rows = [r.targets[target] for r in results if target in r.targets]
        aggregate[target] = {
            f"{metric}_{how}": _stat([_value(s, metric) for s in rows], how)
            for metric in metrics
            for how in ("median", "mean")
        }
        aggregate[target]["tracks"] = len(rows)
    tracks = [
        {
            "track": r.name,
            "subset": r.subset,
            "scores": {t: {m: _value(s, m) for m in metrics} for t, s in r.targets.items()},
            "notes": r.notes,
        }
        for r in results
    ]
    return {
        "settings": settings,
        "metrics": metrics,
        "scored": len(results),
        "expected": len(results) + len(missing),
        "missing": list(missing),
        "aggregate": aggregate,
        "tracks": tracks,
    }


def _json_number(value: Any) -> Any:
    """NaN as ``null``, so that the summary is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    return value


def write_summary(out: Path, summary: dict[str, Any]) -> list[Path]:
    """``summary.json`` (everything) and ``summary.csv`` (one row per track and target)."""
    json_path, csv_path = out / SUMMARY_JSON, out / SUMMARY_CSV
    atomic_write_text(json_path, json.dumps(_json_number(summary), indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["track", "subset", "target", *summary["metrics"]])
    for track in summary["tracks"]:
        for target, scores in track["scores"].items():
            row = [f"{scores[m]:.5f}" for m in summary["metrics"]]
            writer.writerow([track["track"], track["subset"], target, *row])
    atomic_write_text(csv_path, buffer.getvalue())
    return [json_path, csv_path]


def format_table(summary: dict[str, Any]) -> str:
    """Per-track scores then the median and mean over tracks, one column per target·metric."""
    metrics, targets = summary["metrics"], list(summary["aggregate"])
    columns = [(t, m) for t in targets for m in metrics]
    header = [f"{t} {'cSDR' if m == 'SDR' else m}" for t, m in columns]
    rows = [
        [track["track"], *(track["scores"].get(t, {}).get(m, math.nan) for t, m in columns)]
        for track in summary["tracks"]
    ]
    for how in ("median", "mean"):
        rows.append([f"[{how}]", *(summary["aggregate"][t][f"{m}_{how}"] for t, m in columns)])
    name_width = max(len("track"), *(len(r[0]) for r in rows))
    widths = [max(8, len(h)) for h in header]
    titles = [h.rjust(w) for h, w in zip(header, widths, strict=True)]
    lines = ["  ".join(["track".ljust(name_width), *titles])]
    for i, row in enumerate(rows):
        if i == len(summary["tracks"]):
            lines.append("-" * len(lines[0]))
        cells = [f"{v:.3f}".rjust(w) for v, w in zip(row[1:], widths, strict=True)]
        lines.append("  ".join([row[0].ljust(name_width), *cells]))
    scored, expected = summary.get("scored", len(summary["tracks"])), summary.get("expected")
    count = f"{scored} of {expected} tracks scored" if expected is not None else f"{scored} tracks scored"
    missing = summary.get("missing") or []
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        count += f"; no estimates for {shown}"
    lines.append(count)
    return "\n".join(lines)


def plot(out: Path, summary: dict[str, Any]) -> Path:
    """Per-track cSDR and uSDR of each target as horizontal bars: ``scores.png``."""
    require_extra("the score plot", "plot", ("matplotlib",))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(summary["aggregate"])
    names = [t["track"] for t in summary["tracks"]]
    fig, axes = plt.subplots(
        1, len(targets), figsize=(5 * len(targets), 1.6 + 0.35 * len(names)), squeeze=False, sharey=True
    )
    y = np.arange(len(names))
    for ax, target in zip(axes[0], targets, strict=True):
        for offset, metric, color in ((-0.2, "SDR", "C0"), (0.2, "uSDR", "C1")):
            values = [t["scores"].get(target, {}).get(metric, math.nan) for t in summary["tracks"]]
            ax.barh(y + offset, values, height=0.4, color=color, label="cSDR" if metric == "SDR" else metric)
            median = summary["aggregate"][target][f"{metric}_median"]
            if math.isfinite(median):
                ax.axvline(median, linestyle="--", linewidth=1, color=color)
        ax.set_title(target)
        ax.set_xlabel("dB")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, names, fontsize=7)
    axes[0][0].invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, title="dashed: median over tracks", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = out / PLOT_PNG
    atomic_write_text(path, buffer.getvalue())
    return path
