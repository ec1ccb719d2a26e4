"""``bsmamba2 separate``: files and folders in, one folder of stems per track out.

Each input is separated on its own: a bad file is reported on one line and the others go
on; the exit code is 1 if any failed. Existing outputs are skipped unless --overwrite.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
from bsmamba2.cli.options import (
    add_separator_options,
    flag_errors,
    load_separator,
    positive,
    reported_warnings,
    separator_settings,
)
from bsmamba2.errors import BSMamba2Error, require_extra
from bsmamba2.fileio import STOPS_EVERY_WRITE, WriteError
from bsmamba2.separation.files import STATUSES, FileJob, FileReport, naming_options, replay_warnings, run_jobs
from bsmamba2.separation.naming import ACCOMPANIMENT, DEFAULT_TEMPLATE, output_paths

if TYPE_CHECKING:
    from bsmamba2.separation.progress import Progress


@dataclass
class Inputs:
    """What the INPUT arguments name: audio ``files``, the ``missing`` inputs (no such file or
    folder), and how many audio files were left out because they lie under the output folder."""

    files: list[Path]
    missing: list[str]
    under_output: int


def find_inputs(inputs: list[str], pattern: str | None, outdir: Path) -> Inputs:
    """Files named directly, and files under the folders (recursively, matching ``pattern``
    or any audio suffix); never hidden files or anything already under ``outdir`` (earlier
    outputs would become inputs).
    """
    files, missing, under_output = [], [], 0
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
            missing.append(item)
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return Inputs([Path(p) for p in unique], missing, under_output)


def shard(files: list[Path], index: int, count: int) -> list[Path]:
    """``--shard INDEX/COUNT``: every COUNT-th of the inputs sorted by path, from the INDEX-th
    on (0-based): the COUNT shards are disjoint and together hold every input, whatever order
    the arguments or the file system gave them in."""
    return sorted(files, key=str)[index::count]


def _summary(report: FileReport) -> str:
    outputs = {stem: Path(p) for stem, p in report.outputs.items() if stem != "plot"}
    first = outputs[next(iter(outputs))]
    names = ", ".join(p.name for p in outputs.values())
    duration, seconds = report.duration or 0.0, report.wall
    return (
        f"{Path(report.input).name}: {duration:.1f} s of audio in {seconds:.1f} s "
        f"({duration / seconds:.2f}× real time) → {first.parent}/ [{names}]"
    )


def _error(message: object) -> None:
    tqdm.write(f"bsmamba2: error: {message}", file=sys.stderr)


def _usable(files: list[Path]) -> tuple[list[Path], list[FileReport]]:
    """The files that open as audio (header only), and a failed report for each that did not:
    bad inputs are reported before the model is loaded."""
    usable, failed = [], []
    for path in files:
        try:
            open_audio(path).close()
        except AudioError as exc:
            failed.append(FileReport(str(path), "failed", error=str(exc)))
        else:
            usable.append(path)
    return usable, failed


class Reports:
    """Where each file's outcome goes: one line for people (a summary, a skip, an error) on
    stdout or stderr, and with ``--json`` its JSON line on stdout (then nothing else goes
    there) and with ``--report FILE`` appended to FILE, one ``write`` per line (O_APPEND:
    several runs can share a report, e.g. the shards of an array job)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json, self.quiet = args.json, args.quiet
        self.counts = dict.fromkeys(STATUSES, 0)
        self.report = None
        if args.report:
            try:
                self.report = os.open(args.report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            except OSError as exc:
                raise BSMamba2Error(f"--report {args.report}: {exc.strerror.lower()}") from None

    @property
    def stream(self):
        """Where lines for people go: stderr under --json (stdout is the JSON lines')."""
        return sys.stderr if self.json else sys.stdout

    def say(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text, file=self.stream)

    def add(self, report: FileReport) -> None:
        self.counts[report.status] += 1
        if report.status == "failed":
            _error(report.error)
        elif report.status == "skipped":
            self.say(report.error)
        elif report.status == "separated":
            self.say(_summary(report))
        line = json.dumps(report.as_json(), ensure_ascii=False) + "\n"
        if self.json:
            sys.stdout.write(line)
            sys.stdout.flush()
        if self.report is not None:
            try:
                os.write(self.report, line.encode())
            except OSError as exc:
                raise WriteError(f"{os.strerror(exc.errno).lower()} writing the report", exc.errno) from None

    def finish(self) -> int:
        """The closing count, and the exit code: 1 if any file failed or was not attempted."""
        if self.report is not None:
            os.close(self.report)
        separated, skipped, failed, left = (self.counts[s] for s in STATUSES)
        if left:
            files_were = "file was" if left == 1 else "files were"
            _error(f"stopped: the other {left} {files_were} not attempted")
        if not self.quiet or failed or left:
            print(
                f"{separated} separated, {skipped} skipped, {failed} failed"
                + (f", {left} not attempted" if left else ""),
                file=sys.stderr if failed or left else self.stream,
            )
        return 1 if failed or left else 0


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
    devices = worker_devices(args)
    subtype_for(args.format, args.bit_depth)  # bad combinations fail before any work
    if args.plot:
        require_extra("separate --plot", "plot")
    if args.sample_rate is not None:
        output_rate(args.format, args.sample_rate, args.sample_rate)
    compression_level(args.format, args.bitrate, args.sample_rate or 48000, 2)
    reports = Reports(args)
    inputs = find_inputs(args.inputs, args.glob, outdir)
    for item in inputs.missing:
        reports.add(FileReport(item, "failed", error=f"{item}: no such file or directory"))
    skipped_note = (
        f"{inputs.under_output} audio file{'s' * (inputs.under_output != 1)} under the output folder "
        f"{outdir} left out (earlier outputs are never inputs; choose another -o to separate them)"
    )
    if not inputs.files and not inputs.missing:
        found = "no audio files found in the inputs" + (f" matching {args.glob!r}" if args.glob else "")
        raise BSMamba2Error(found + (f": {skipped_note}" if inputs.under_output else ""))
    if inputs.under_output:
        print(f"bsmamba2: note: {skipped_note}", file=sys.stderr)
    files = shard(inputs.files, *args.shard) if args.shard else inputs.files
    files, unusable = _usable(files)
    for report in unusable:
        reports.add(report)
    if files:
        options = dict(
            stems=stems,
            fmt=args.format,
            bit_depth=args.bit_depth,
            bitrate=args.bitrate,
            start=args.start,
            duration=args.duration,
            sample_rate=args.sample_rate,
            overwrite=args.overwrite,
            plot=args.plot,
        )
        jobs = [
            FileJob(path, outdir, {**options, "filename": file_template(args.filename, path, args.inputs)})
            for path in files
        ]
        progress = not args.quiet and sys.stderr.isatty()  # no bars (cursor codes) in logs
        if args.compile == "yes":
            reports.say("compiling the model on the first segment: minutes the first time, cached after")
        separate = _in_this_process if len(devices) == 1 else _in_workers
        separate(args, jobs, devices, reports, progress)
    return reports.finish()


def worker_devices(args: argparse.Namespace) -> list[str]:
    """One device per worker process: ``--devices`` (``all`` = every CUDA GPU, a number N =
    ``cuda:N``), else ``--device`` ``--jobs`` times."""
    if args.devices is None:
        return [args.device] * args.jobs
    if args.jobs != 1:
        raise BSMamba2Error(
            "--jobs and --devices both choose the workers: use one (-j 2 = --devices cpu,cpu)"
        )
    if args.devices == "all":
        import torch

        if not torch.cuda.is_available():
            raise BSMamba2Error("--devices all: no CUDA device here (on the CPU: --devices cpu,cpu or -j N)")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    names = [d.strip() for d in args.devices.split(",")]
    if not all(names):
        raise BSMamba2Error(f"--devices {args.devices}: expected a list such as 0,1 or cpu,cpu")
    return [f"cuda:{d}" if d.isdigit() else d for d in names]


def _planned(jobs: list[FileJob], outputs: list[str], name: str, reports: Reports) -> list[FileJob]:
    """The jobs whose outputs no other input's would overwrite (the first one keeps them; the
    others fail with a hint), each job's names checked before any work. The template and the
    stems are checked on the first: a mistake there is one error for the whole run."""
    planned: dict[Path, Path] = {}
    kept = []
    for number, job in enumerate(jobs):
        try:
            targets = output_paths(job.path, job.outdir, outputs, name, *naming_options(job.options))
        except BSMamba2Error as exc:
            if not number:
                raise
            reports.add(FileReport(str(job.path), "failed", error=str(exc)))
            continue
        clash = next((t for t in targets.values() if t in planned), None)
        if clash:
            message = (
                f"{job.path}: {clash} is also the output of {planned[clash]}; tell them apart in --filename "
                "with {dir} (the input's folder) or {trackext} (its suffix), e.g. "
                "--filename '{dir}/{track}/{stem}.{ext}'"
            )
            reports.add(FileReport(str(job.path), "failed", error=message))
            continue
        planned.update(dict.fromkeys(targets.values(), job.path))
        kept.append(job)
    return kept


def _in_this_process(
    args: argparse.Namespace, jobs: list[FileJob], devices: list[str], reports: Reports, progress: bool
) -> None:
    """One worker: the model in this process, the files one after the other."""
    separator = load_separator(args, progress=progress, official=args.official, device=devices[0])
    jobs = _planned(jobs, separator.outputs, separator.name, reports)
    bar = tqdm(total=len(jobs), desc="files", unit="file", disable=not progress or len(jobs) < 2,
               dynamic_ncols=True)
    with contextlib.closing(run_jobs(separator, jobs)) as done:  # the next file overlaps this one's end
        for number, report in enumerate(done):
            bar.update()
            replay_warnings(report.warnings, lambda: reported_warnings(args.quiet))
            reports.add(report)
            if report.errno in STOPS_EVERY_WRITE:  # e.g. a full disk: every other file would fail too
                for left in jobs[number + 1 :]:  # the next one, begun already, leaves nothing
                    reports.add(FileReport(str(left.path), "not attempted"))
                break
    bar.close()


def _in_workers(
    args: argparse.Namespace, jobs: list[FileJob], devices: list[str], reports: Reports, progress: bool
) -> None:
    """One worker process per device, whole files from one queue, one progress display here."""
    from bsmamba2.separation.pool import SeparatorPool

    weights = resolve_weights(args.checkpoint, args.model, progress=progress)  # downloaded once, here
    settings = separator_settings(args, official=args.official)
    with flag_errors(), SeparatorPool(weights, devices, **settings) as pool:
        replay_warnings(pool.startup_warnings, lambda: reported_warnings(args.quiet))
        jobs = _planned(jobs, pool.outputs, pool.name, reports)
        bar = tqdm(total=len(jobs), desc=f"{len(devices)} workers", unit="file", disable=not progress,
                   dynamic_ncols=True)
        seconds: dict[str, float] = {}

        def show(step: Progress) -> None:
            seconds[step.file] = step.done
            bar.set_postfix_str(f"{sum(seconds.values()):.0f} s of audio", refresh=True)

        for report in pool.run(jobs, on_progress=show):
            if report.status != "not attempted":
                bar.update()
            replay_warnings(report.warnings, lambda: reported_warnings(args.quiet))
            reports.add(report)
            if report.errno in STOPS_EVERY_WRITE:
                pool.stop()
        bar.close()


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


def _shard(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, e.g. 0/4, got {text!r}")
    return int(index), int(count)


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
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line on stdout, nothing else there (messages go to stderr): per input "
        "file its input, status (separated, skipped, failed, not attempted), outputs (stem: path), "
        "duration_s, wall_s, x_realtime, peak and peak_dbfs per stem, clipped, error; with "
        "--list-models one per model",
    )
    p.add_argument(
        "--report",
        metavar="FILE",
        help="append the same JSON lines to FILE, one write per line (several runs may share it)",
    )
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
    workers = p.add_argument_group("several files at once")
    workers.add_argument(
        "-j",
        "--jobs",
        type=positive,
        default=1,
        metavar="N",
        help="separate N files at once on --device, in N worker processes each with its own model, "
        "the CPU threads shared between them (default: %(default)s)",
    )
    workers.add_argument(
        "--devices",
        metavar="LIST",
        help="one worker process per device, e.g. 0,1 (= cuda:0,cuda:1), all (every CUDA GPU) or "
        "cpu,cpu; whole files from one queue, largest first",
    )
    workers.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="separate only the I-th of N disjoint shares of the inputs (0 <= I < N; every N-th "
        "of the inputs sorted by path), e.g. --shard $SLURM_ARRAY_TASK_ID/4 in a SLURM array 0-3",
    )
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
        help="output format; ogg is Vorbis, opus is Opus in Ogg; mp3/ogg/opus by libsndfile, or by "
        "ffmpeg where libsndfile lacks the encoder (default: %(default)s)",
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
