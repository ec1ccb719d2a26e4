"""``bsmamba2 prepare --musdb ROOT``: the salient-window (SAD) index that training samples from."""

from __future__ import annotations

import argparse

from bsmamba2.data.musdb import SUBSETS
from bsmamba2.data.sad import WINDOW_SECONDS, build_index


def run(args: argparse.Namespace) -> int:
    out = build_index(
        args.musdb,
        out=args.out,
        subsets=args.subsets,
        is_wav=not args.stems,
        window_seconds=args.window,
        progress=not args.quiet,
    )
    print(f"SAD index written to {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="source activity detection on MUSDB18(-HQ): the index of salient windows (resumable)",
        description="Finds the salient 8 s windows of every stem (spec §4) and writes them to a JSON "
        "index; an interrupted run continues where it stopped.",
    )
    parser.add_argument("--musdb", required=True, metavar="ROOT", help="MUSDB18-HQ (or MUSDB18) folder")
    parser.add_argument("--out", default=None, help="index file (default: ROOT/bsmamba2_sad.json)")
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
