"""``bsmamba2 prepare --musdb ROOT``: the salient-window (SAD) index that training samples from;
``--demo DIR`` first generates a small MUSDB18-HQ-layout set there (:mod:`bsmamba2.data.demo`)."""

from __future__ import annotations

import argparse

from bsmamba2.data.demo import make_demo
from bsmamba2.data.musdb import SUBSETS
from bsmamba2.data.sad import WINDOW_SECONDS, build_index
from bsmamba2.errors import BSMamba2Error, require_extra


def run(args: argparse.Namespace) -> int:
    require_extra("bsmamba2 prepare", "train", ("musdb",))  # musdb's song list and validation split
    root = args.musdb
    if args.demo:
        if args.stems:
            raise BSMamba2Error("--demo writes wav folders (MUSDB18-HQ's layout): drop --stems")
        root = make_demo(args.demo)
        print(f"demo set (generated audio, not music to learn from) written to {root}")
    out = build_index(
        root,
        out=args.out,
        subsets=args.subsets,
        is_wav=not args.stems,
        window_seconds=args.window,
        progress=not args.quiet,
    )
    print(f"SAD index written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help=summary,
        description="Finds the salient 8 s windows of every stem (spec §4) and writes them to a JSON "
        "index; an interrupted run continues where it stopped.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--musdb", metavar="ROOT", help="MUSDB18-HQ (or MUSDB18) folder")
    source.add_argument(
        "--demo",
        metavar="DIR",
        help="generate a small set in MUSDB18-HQ's layout in the new folder DIR (3 training, 2 "
        "validation and 2 test songs of 12 s, synthetic stems, ~70 MB), then index it: the smoke "
        "training and the evaluation run on it; real training needs MUSDB18-HQ",
    )
    parser.add_argument("--out", default=None, help="index file (default: ROOT/ or DIR/bsmamba2_sad.json)")
    parser.add_argument(
        "--subsets",
        nargs="+",
        default=["train", "valid"],
        choices=SUBSETS,
        help="train (86 songs), valid (the 14 official validation songs), test",
    )
    parser.add_argument(
        "--stems", action="store_true", help="MUSDB18 .stem.mp4 files instead of HQ wav folders"
    )
    parser.add_argument("--window", type=float, default=WINDOW_SECONDS, help="window length in seconds (8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
