"""``bsmamba2 evaluate``: cSDR (museval v4) and uSDR on MUSDB18 or any folder of stems."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from bsmamba2.checkpoint.registry import resolve_weights
from bsmamba2.cli.options import add_chunking_options, add_device_options, add_weight_options, load_separator
from bsmamba2.device import resolve_device
from bsmamba2.errors import BSMamba2Error, require_extra
from bsmamba2.evaluation.results import format_table, plot, summarize, write_summary
from bsmamba2.evaluation.runner import SeparateFn, evaluate_tracks
from bsmamba2.evaluation.scoring import BACKENDS
from bsmamba2.evaluation.tracks import folder_tracks, musdb_tracks
from bsmamba2.separation.chunking import DEFAULT_SEGMENT


def _separator(args: argparse.Namespace, weights: Path) -> SeparateFn:
    """The Separator's ``separate``: official protocol unless --segment/--overlap are given
    (then 8 s and no overlap stand for the one not given)."""
    if args.segment is None and args.overlap is None:
        separator = load_separator(args, progress=not args.quiet, model=weights, official=True)
    else:
        separator = load_separator(
            args,
            progress=not args.quiet,
            model=weights,
            segment=DEFAULT_SEGMENT if args.segment is None else args.segment,
            overlap=0.0 if args.overlap is None else args.overlap,
        )
    return separator.separate


def _metrics_device(device: str) -> str | torch.device:
    """Where the metrics run: the separation's device, but the CPU for MPS (no float64 there)."""
    resolved = resolve_device(device)
    return "cpu" if resolved.type == "mps" else resolved


def _settings(args: argparse.Namespace, weights: Path | None) -> dict[str, Any]:
    """What the scores depend on; saved with each track so a resumed run stays consistent."""
    settings: dict[str, Any] = {"backend": args.backend}
    if args.estimates is not None:
        settings["estimates"] = str(args.estimates.resolve())
    else:
        settings.update(
            checkpoint=str(weights.resolve()) if weights else None,
            ema=args.ema,
            protocol="official" if args.segment is None and args.overlap is None else "custom",
            segment=args.segment,
            overlap=args.overlap,
            precision=args.precision,
        )
        if args.tta or args.shifts > 1:  # recorded only when used: earlier results stay comparable
            settings.update(tta=args.tta, shifts=args.shifts)
    return settings


def run(args: argparse.Namespace) -> int:
    needed = ["librosa"]  # bleedless/fullness's mel filterbank
    needed += ["musdb"] if args.musdb else []
    needed += ["museval"] if args.backend == "museval" else []
    require_extra("bsmamba2 evaluate", "eval", tuple(needed))
    if args.plot:
        require_extra("evaluate --plot", "plot", ("matplotlib",))
    if args.estimates is not None and (args.checkpoint or args.model):
        raise BSMamba2Error("give either a model to separate with or --estimates (already separated)")
    if args.estimates is not None and not args.estimates.is_dir():
        raise BSMamba2Error(f"estimates folder {args.estimates} does not exist")
    if args.musdb is not None:
        subset = args.subset or ("train" if args.split else "test")
        tracks = musdb_tracks(args.musdb, args.is_wav, subset, args.split, args.tracks)
    else:
        tracks = folder_tracks(args.references, args.tracks)
    weights = None
    if args.estimates is None:
        weights = resolve_weights(args.checkpoint, args.model, progress=not args.quiet)
    settings = _settings(args, weights)
    separate = _separator(args, weights) if weights is not None else None
    results, missing = evaluate_tracks(
        tracks,
        args.output,
        settings,
        separate=separate,
        estimates=args.estimates,
        backend=args.backend,
        device=_metrics_device(args.device),
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    summary = summarize(results, settings, missing)
    written = write_summary(args.output, summary)
    if args.plot:
        written.append(plot(args.output, summary))
    print(format_table(summary))
    print(
        "cSDR: museval v4 SDR, median over 1 s windows per track; uSDR: whole-track SDR; "
        "bleedless/fullness: mel-spectrogram scores (MVSep/MSST), 100 at best"
    )
    print("written: " + ", ".join(str(p) for p in written) + f" and per-track JSON in {args.output}")
    if missing and not args.allow_missing:
        raise BSMamba2Error(
            f"{len(missing)} of {summary['expected']} tracks have no estimates in {args.estimates}, so the "
            f"medians cover {summary['scored']}; --allow-missing accepts that"
        )
    return 0


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=summary,
        description=(
            "Separate MUSDB18 tracks with a checkpoint (official protocol: 8 s chunks, no overlap) "
            "or read existing separations ({track}/{stem}.wav), and score them: cSDR exactly as "
            "museval v4 (median of 1 s windows) and whole-track uSDR. Writes museval per-track JSON, "
            "summary.json and summary.csv; resumes where a previous run stopped."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--musdb", type=Path, metavar="ROOT", help="MUSDB18 root (with train/ and test/)")
    source.add_argument(
        "--references", type=Path, metavar="DIR", help="folder of reference stems {track}/{stem}.wav"
    )
    parser.add_argument(
        "--estimates", type=Path, metavar="DIR", help="score these separations ({track}/{stem}.wav)"
    )
    parser.add_argument("--is-wav", action="store_true", help="MUSDB18-HQ (wav folders), not .stem.mp4")
    parser.add_argument("--subset", choices=("test", "train"), help="MUSDB18 subset (default: test)")
    parser.add_argument(
        "--split", choices=("train", "valid"), help="musdb's official 14-song validation split of train"
    )
    parser.add_argument("--tracks", nargs="+", metavar="NAME", help="only these tracks")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="with --estimates: exit 0 although some tracks have no estimates (they are left out of "
        "the medians; the summary says how many were scored of how many)",
    )
    model = parser.add_argument_group("separation (without --estimates)")
    add_weight_options(model)
    add_chunking_options(model, official=True)
    add_device_options(parser)  # --device runs the metrics too
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="fast",
        help="fast: museval's SDR computed directly (default); museval: museval itself, + SIR/SAR/ISR",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("results"), help="output folder (default: results)"
    )
    parser.add_argument("--overwrite", action="store_true", help="score tracks already in the output again")
    parser.add_argument("--plot", action="store_true", help="also write scores.png (per-track bars)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
