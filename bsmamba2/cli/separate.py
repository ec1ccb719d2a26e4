"""``bsmamba2 separate``: files and folders in, one folder of stems per track out.

Each input is separated on its own: a bad file is reported on one line and the others go
on; the exit code is 1 if any failed. Existing outputs are skipped unless --overwrite.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from bsmamba2.audio.io import (
    AUDIO_SUFFIXES,
    BIT_DEPTHS,
    DEFAULT_BITRATES,
    FORMATS,
    AudioError,
    compression_level,
    open_audio,
    output_rate,
    show_decoder_messages,
    subtype_for,
)
from bsmamba2.checkpoint.registry import KNOWN, resolve_weights
from bsmamba2.cli.options import add_separator_options, load_separator, reported_warnings
from bsmamba2.errors import BSMamba2Error, require_extra
from bsmamba2.fileio import STOPS_EVERY_WRITE, WriteError
from bsmamba2.separation.naming import ACCOMPANIMENT, DEFAULT_TEMPLATE


@dataclass
class Inputs:
    """What the INPUT arguments name: audio ``files``, one-line ``errors`` for inputs that do not
    exist, and how many audio files were left out because they lie under the output folder."""

    files: list[Path]
    errors: list[str]
    under_output: int


def find_inputs(inputs: list[str], pattern: str | None, outdir: Path) -> Inputs:
    """Files named directly, and files under the folders (recursively, matching ``pattern``
    or any audio suffix); never hidden files or anything already under ``outdir`` (earlier
    outputs would become inputs).
    """
    files, errors, under_output = [], [], 0
    out = outdir.resolve()
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            for found in sorted(path.rglob("*")):
                relative = found.relative_to(path).parts
                if not found.is_file() or any(p.startswith(".") for p in relative):
                    continue
                if not (
                    fnmatch.fnmatch(found.name, pattern)
                    if pattern
                    else found.suffix.lower() in AUDIO_SUFFIXES
                ):
                    continue
                if found.resolve().is_relative_to(out):
                    under_output += 1
                else:
                    files.append(found)
        else:
            errors.append(f"{path}: no such file or directory")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return Inputs([Path(p) for p in unique], errors, under_output)


def _summary(path: Path, outputs: dict[str, Path], seconds: float) -> str:
    first = outputs[next(iter(outputs))]
    duration = sf.info(str(first)).duration
    names = ", ".join(p.name for p in outputs.values())
    return (
        f"{path.name}: {duration:.1f} s of audio in {seconds:.1f} s ({duration / seconds:.2f}× real time) "
        f"→ {first.parent}/ [{names}]"
    )


def _error(message: object) -> None:
    tqdm.write(f"bsmamba2: error: {message}", file=sys.stderr)


def _usable(files: list[Path]) -> tuple[list[Path], int]:
    """The files that open as audio (header only), and how many did not (each said on one line):
    bad inputs are reported before the model is loaded."""
    usable, failed = [], 0
    for path in files:
        try:
            open_audio(path).close()
        except AudioError as exc:
            failed += 1
            _error(exc)
        else:
            usable.append(path)
    return usable, failed


def list_models(as_json: bool) -> None:
    """``--list-models``: every known checkpoint, as lines of text or one JSON object per line."""
    for entry in KNOWN.values():
        about = entry.describe()
        if as_json:
            print(json.dumps(about))
            continue
        cached = ("cached in " if about["cached"] else "not downloaded yet, goes to ") + str(about["path"])
        print(f"{entry.name}: {entry.about}")
        print(f"  {entry.size:,} bytes, SHA-256 {entry.sha256}, {cached}")
        print(f"  trained on {entry.training_data}; licence: {entry.licence}")


def file_template(template: str, path: Path, inputs: list[str]) -> str:
    """``--filename`` for one input, its command-line fields filled in: ``{dir}``, the input's
    folder relative to the INPUT folder it was found in (``.`` for a file named directly), and
    ``{trackext}``, its suffix without the dot; the Separator fills in the rest."""
    folder = "."
    for item in inputs:
        root = Path(item).resolve()
        if root.is_dir() and path.resolve().is_relative_to(root):
            folder = path.resolve().parent.relative_to(root).as_posix() or "."
            break
    for field, value in (("dir", folder), ("trackext", path.suffix.lstrip("."))):
        template = template.replace("{" + field + "}", value.replace("{", "{{").replace("}", "}}"))
    return template


def run(args: argparse.Namespace) -> int:
    if args.list_models:
        list_models(args.json)
        return 0
    if args.download_only:
        print(resolve_weights(args.checkpoint, args.model, progress=not args.quiet))
        return 0
    if not args.inputs:
        raise BSMamba2Error("no INPUT: name audio files or folders to separate (or use --list-models)")
    show_decoder_messages(args.verbose)
    outdir = Path(args.outdir)
    stems = [s for item in args.stems or [] for s in item.split(",") if s] or None
    if args.two_stems:
        stems = [args.two_stems, ACCOMPANIMENT]
    if args.official and (args.segment is not None or args.overlap is not None):
        raise BSMamba2Error("--official fixes 8 s segments without overlap: drop --segment and --overlap")
    subtype_for(args.format, args.bit_depth)  # bad combinations fail before any work
    if args.plot:
        require_extra("separate --plot", "plot")
    if args.sample_rate is not None:
        output_rate(args.format, args.sample_rate, args.sample_rate)
    compression_level(args.format, args.bitrate, args.sample_rate or 48000, 2)
    inputs = find_inputs(args.inputs, args.glob, outdir)
    for message in inputs.errors:
        _error(message)
    skipped_note = (
        f"{inputs.under_output} audio file{'s' * (inputs.under_output != 1)} under the output folder "
        f"{outdir} left out (earlier outputs are never inputs; choose another -o to separate them)"
    )
    if not inputs.files and not inputs.errors:
        found = "no audio files found in the inputs" + (f" matching {args.glob!r}" if args.glob else "")
        raise BSMamba2Error(found + (f": {skipped_note}" if inputs.under_output else ""))
    if inputs.under_output:
        print(f"bsmamba2: note: {skipped_note}", file=sys.stderr)
    files, failed = _usable(inputs.files)
    failed += len(inputs.errors)
    if not files:
        return 1
    # torch and the model only now: the checks above answer within a second.
    from bsmamba2.separation import OutputExistsError

    progress = not args.quiet and sys.stderr.isatty()  # no bars (cursor codes) in logs
    separator = load_separator(args, progress=progress, official=args.official)
    # Template and stems too.
    first = file_template(args.filename, files[0], args.inputs)
    separator.output_paths(files[0], outdir, stems, first, args.format)
    separated, skipped, not_attempted, planned = 0, 0, 0, {}
    say = (lambda *a, **k: None) if args.quiet else tqdm.write
    if args.compile == "yes":
        say("compiling the model on the first segment: minutes the first time, cached on disk after")
    bar = tqdm(files, desc="files", unit="file", disable=not progress or len(files) < 2, dynamic_ncols=True)
    for index, path in enumerate(bar):
        start = time.perf_counter()
        try:
            filename = file_template(args.filename, path, args.inputs)
            targets = separator.output_paths(path, outdir, stems, filename, args.format)
            clash = next((t for t in targets.values() if t in planned), None)
            if clash:
                raise BSMamba2Error(
                    f"{path}: {clash} is also the output of {planned[clash]}; tell them apart in --filename "
                    "with {dir} (the input's folder) or {trackext} (its suffix), e.g. "
                    "--filename '{dir}/{track}/{stem}.{ext}'"
                )
            planned.update(dict.fromkeys(targets.values(), path))
            with reported_warnings(args.quiet):
                outputs = separator.separate_file(
                    path,
                    outdir,
                    stems=stems,
                    filename=filename,
                    fmt=args.format,
                    bit_depth=args.bit_depth,
                    bitrate=args.bitrate,
                    start=args.start,
                    duration=args.duration,
                    sample_rate=args.sample_rate,
                    overwrite=args.overwrite,
                    plot=args.plot,
                )
        except OutputExistsError as exc:
            skipped += 1
            say(f"{exc}")
        except WriteError as exc:
            failed += 1
            _error(exc)
            if exc.errno in STOPS_EVERY_WRITE:  # e.g. a full disk: every other file would fail too
                not_attempted = len(files) - index - 1
                if not_attempted:
                    files_were = "file was" if not_attempted == 1 else "files were"
                    _error(f"stopped: the other {not_attempted} {files_were} not attempted")
                break
        except (BSMamba2Error, OSError) as exc:
            failed += 1
            _error(exc)
        else:
            separated += 1
            say(
                _summary(path, {k: v for k, v in outputs.items() if k != "plot"}, time.perf_counter() - start)
            )
    bar.close()
    if not args.quiet or failed:
        print(
            f"{separated} separated, {skipped} skipped, {failed} failed"
            + (f", {not_attempted} not attempted" if not_attempted else ""),
            file=sys.stderr if failed else sys.stdout,
        )
    return 1 if failed else 0


def _seconds(text: str) -> float:
    """Seconds as ``S``, ``M:SS`` or ``H:MM:SS`` (decimals allowed in the last field)."""
    try:
        fields = [float(f) for f in text.split(":")]
        if len(fields) > 3 or any(f < 0 for f in fields):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds such as 90, 1:30 or 0:01:30, got {text!r}"
        ) from None
    return sum(f * 60**i for i, f in enumerate(reversed(fields)))


def _kbps(text: str) -> int:
    try:
        return int(text.lower().removesuffix("k"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected kbps such as 192 or 192k, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    p = subparsers.add_parser(
        "separate",
        help=summary,
        description="Separate audio files (or every audio file under folders) into stems. The "
        "default weights (--model bs_mamba2_vocals) were trained on MUSDB18, whose songs are "
        "for academic, non-commercial research use: so are the weights.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders (searched recursively)")
    p.add_argument(
        "--list-models",
        action="store_true",
        help="list the known checkpoints (size, SHA-256, training data, licence, cached or not) and exit",
    )
    p.add_argument("--json", action="store_true", help="with --list-models: one JSON object per line")
    p.add_argument(
        "--download-only",
        action="store_true",
        help="fetch the --model weights into the cache (verified), print their path and exit",
    )
    p.add_argument(
        "-o", "--outdir", "--out", default="separated", help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--glob", help="file name pattern for folders, e.g. '*.flac' (default: common audio suffixes)"
    )
    add_separator_options(p)
    p.add_argument(
        "--official",
        action="store_true",
        help="the official protocol: 8 s segments, no overlap (not with --segment or --overlap)",
    )
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument(
        "--stems", action="append", metavar="NAME[,NAME]", help="stems to write (default: all)"
    )
    chosen.add_argument(
        "--two-stems",
        metavar="STEM",
        help="as in demucs: STEM and accompaniment (the mixture minus STEM), e.g. --two-stems vocals",
    )
    p.add_argument(
        "--filename",
        default=DEFAULT_TEMPLATE,
        help="output path template under OUTDIR with {track} {stem} {ext} {model}, and {dir} (the "
        "input's folder under the INPUT folder) and {trackext} (its suffix) (default: %(default)s)",
    )
    formats = p.add_mutually_exclusive_group()
    formats.add_argument(
        "--format",
        default="wav",
        choices=FORMATS,
        help="output format; ogg is Vorbis, opus is Opus in Ogg (default: %(default)s)",
    )
    formats.add_argument("--mp3", dest="format", action="store_const", const="mp3", help="= --format mp3")
    formats.add_argument("--flac", dest="format", action="store_const", const="flac", help="= --format flac")
    depths = p.add_mutually_exclusive_group()
    depths.add_argument(
        "--bit-depth", choices=BIT_DEPTHS, help="16, 24 or float (default: float WAV, 24-bit FLAC)"
    )
    depths.add_argument(
        "--int24", dest="bit_depth", action="store_const", const="24", help="= --bit-depth 24"
    )
    depths.add_argument(
        "--float32", dest="bit_depth", action="store_const", const="float", help="= --bit-depth float"
    )
    p.add_argument(
        "--bitrate",
        "--mp3-bitrate",
        type=_kbps,
        metavar="KBPS",
        help="mp3 and opus: kbps of all channels together, e.g. 192 or 192k (default: "
        + ", ".join(f"{k} {fmt}" for fmt, k in DEFAULT_BITRATES.items())
        + "; MP3 at a constant bitrate)",
    )
    p.add_argument(
        "--sample-rate",
        type=int,
        help="output sample rate (default: the input's; for mp3 and opus the next rate they store)",
    )
    p.add_argument(
        "--start",
        type=_seconds,
        default=0.0,
        metavar="TIME",
        help="preview: begin here (seconds, M:SS or H:MM:SS); only the part asked for is decoded",
    )
    p.add_argument(
        "--duration",
        type=_seconds,
        metavar="TIME",
        help="preview: separate only this long (default: to the end)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (default: skip the track)"
    )
    p.add_argument(
        "--plot", action="store_true", help="also write a PNG of the spectrograms of mixture and stems"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or summaries, only warnings and errors"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the decoders' own notes (libmpg123's 'Illegal Audio-MPEG-Header ... resync' "
        "lines on damaged MP3s), hidden by default",
    )
    p.set_defaults(func=run)
