"""The :class:`Separator`: audio of any length, rate and channel count in, stems out.

One streaming path serves arrays and files alike: input blocks are resampled to the
model's rate (soxr), cut into cross-faded segments (:mod:`.chunking`), run through the
model a batch of segments at a time, overlap-added, resampled to the output rate and
handed out block by block together with the matching block of the mixture, so a file of
any length is read and written in blocks with only a few segments alive at once. The
accompaniment is the mixture minus the vocals, sample by sample, so the two always add up
to the input (to float32 rounding): nothing is rescaled.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bsmamba2.audio import (
    AudioError,
    StreamResampler,
    audio_writer,
    check_channels,
    check_finite,
    open_audio,
    pcm_to_float,
    subtype_for,
)
from bsmamba2.audio.io import BLOCK, compression_level, output_rate, peak_warning, wav_container
from bsmamba2.checkpoint import load_model
from bsmamba2.device import resolve_device, resolve_precision
from bsmamba2.errors import BSMamba2Error, ParameterError, require_extra
from bsmamba2.fileio import remove_stale_temporaries
from bsmamba2.separation.batching import auto_batch_size, check_memory
from bsmamba2.separation.chunking import DEFAULT_OVERLAP, DEFAULT_SEGMENT, Chunking
from bsmamba2.separation.engine import (
    AutoCompile,
    BatchSize,
    Fifo,
    NonFiniteOutputError,
    SegmentModel,
    SegmentStream,
)
from bsmamba2.separation.files import SeparatedFile, Step
from bsmamba2.separation.naming import ACCOMPANIMENT, DEFAULT_TEMPLATE, output_names, output_paths
from bsmamba2.separation.plot import SpectrogramSketch, save_spectrograms
from bsmamba2.separation.progress import ProgressCallback, ProgressReporter
from bsmamba2.separation.threads import Ahead
from bsmamba2.separation.warmup import warm_up
from bsmamba2.separation.writing import MIXTURE, Outputs

MAX_SHIFT = 0.5  # seconds: the largest delay of a --shifts pass (demucs's)


class OutputExistsError(BSMamba2Error):
    """Outputs already there and ``overwrite`` not set: the file is skipped, nothing changes."""


class ClippingWarning(UserWarning):
    """An integer output file had samples beyond full scale, clipped (the message names the peak)."""


@contextlib.contextmanager
def _naming(where: str | os.PathLike) -> Iterator[None]:
    """Put the input's name in front of a :class:`NonFiniteOutputError`."""
    try:
        yield
    except NonFiniteOutputError as exc:
        raise NonFiniteOutputError(f"{where}: {exc}") from None


class Separator:
    """Separates audio with a BSMamba2: arrays (:meth:`separate`) and files
    (:meth:`separate_file`) of any length, rate and channel count, in cross-faded segments.

    Args:
        model_or_path: a BSMamba2 (or any module with its interface: a ``config`` and complex
            spectrogram in, stems out; moved to ``device`` and put in eval mode), a checkpoint
            file of any layout :func:`bsmamba2.load_model` reads, or a known checkpoint's name
            (``"bs_mamba2_vocals"``, downloaded on first use).
        device: ``auto`` (the first CUDA device, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        segment: seconds per model call (default 8, the training length).
        overlap: the cross-faded fraction of a segment (default 0.25); the hop between segments
            must stay at least one STFT window.
        batch_size: segments per forward pass; ``auto`` is 1 on the CPU and what fits in half the
            free memory on CUDA. Halved if CUDA runs out of memory; lowered, with a warning,
            when its estimate passes all of the device's memory.
        precision: ``auto`` (bf16 on CUDA and on CPUs with bf16 instructions, else fp32:
            :func:`~bsmamba2.device.resolve_precision`), ``fp32``, ``bf16`` or ``fp16`` (autocast).
        progress: show tqdm bars.
        ema: take the EMA weights of an official Lightning checkpoint.
        official: the official evaluation protocol (or :meth:`official`): back-to-back 8 s
            segments, no overlap, the last one zero-padded; not with ``segment`` or ``overlap``.
        compile: ``True`` runs the Mamba-2 modules through ``torch.compile`` on the CPU
            (:func:`~bsmamba2.separation.compiling.compile_blocks`); ``"auto"`` times the first
            segment of each input and compiles for the rest when that saves time.
        tta: run every segment also with its channels swapped and with its polarity inverted
            (mono: only inverted), each output turned back, and average (MSST's ``--use_tta``);
            ×3 the time.
        shifts: passes over the input, all but the first delayed by a random amount up to
            :data:`MAX_SHIFT` seconds (a fixed seed: the same input gives the same output), averaged
            (demucs's ``--shifts``); ×N time. Both augmentations go through the same chunking.
        cuda_graphs: on CUDA, replay the model's forward as a CUDA graph from the second batch
            of the full batch size on (:mod:`~bsmamba2.separation.graphs`; the same output, bit
            for bit; other batch sizes eager).

    Raises:
        ParameterError: a bad argument; ``parameter`` names it (the command line names its flag).
        CheckpointError: weights that cannot be read.
    """

    def __init__(
        self,
        model_or_path: torch.nn.Module | str | os.PathLike,
        device: str | torch.device = "auto",
        segment: float | None = None,
        overlap: float | None = None,
        batch_size: int | str = "auto",
        precision: str = "auto",
        progress: bool = True,
        ema: bool = False,
        official: bool = False,
        compile: bool | str = False,
        tta: bool = False,
        shifts: int = 1,
        cuda_graphs: bool = True,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if isinstance(model_or_path, torch.nn.Module):
            self.model, self.name = model_or_path, "bsmamba2"
        else:
            self.model, self.name = load_model(model_or_path, ema=ema), Path(model_or_path).stem
        self.model.to(self.device).eval()
        if compile not in (True, False, "auto"):
            raise ParameterError("compile", f"compile must be True, False or 'auto', got {compile!r}")
        self.compile_mode = compile
        self.tta = bool(tta)
        self.runner = SegmentModel(self.model, self.device, self.precision, self.tta, cuda_graphs)
        """The model callable of the streaming engine (:mod:`.engine`)."""
        if compile is True:
            self.runner.compile()
        self.config = self.model.config
        self.stems = list(self.model.config.stem_names)
        if official and (segment is not None or overlap is not None):
            raise ParameterError(
                "official", "official=True fixes 8 s segments without overlap; do not pass segment or overlap"
            )
        if official:
            segment, overlap = DEFAULT_SEGMENT, 0.0
        self.chunking = Chunking.from_seconds(
            DEFAULT_SEGMENT if segment is None else segment,
            DEFAULT_OVERLAP if overlap is None else overlap,
            self.config.sample_rate,
            self.config.n_fft,
        )
        self.segment_samples = self.chunking.segment
        if self.device.type == "cuda":  # the kernels compiled now, several at once (a cold cache)
            warm_up(self.model, self.segment_samples, self.precision, self.device)
        self.hop_samples = self.chunking.hop
        self.pad_samples = self.chunking.pad
        if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise ParameterError("batch_size", f"batch size must be auto or at least 1, got {batch_size!r}")
        asked = 1 if batch_size == "auto" else batch_size
        size = check_memory(self.config, self.segment_samples, asked, self.device, self.precision)
        if batch_size == "auto":
            size = auto_batch_size(self.config, self.segment_samples, self.device, self.precision)
        self._batch = BatchSize(size, self.segment_samples / self.config.sample_rate, self.device)
        self.progress = progress
        if not (isinstance(shifts, int) and shifts >= 1):
            raise ParameterError("shifts", f"shifts must be a whole number of at least 1, got {shifts!r}")
        most = max(1, round(MAX_SHIFT * self.config.sample_rate))
        delays = np.random.default_rng(0).integers(1, most + 1, size=shifts - 1)
        self.shift_samples = [0, *(int(d) for d in delays)]
        """The delay of each pass over the input, in samples at the model's rate."""

    @classmethod
    def official(cls, model_or_path: torch.nn.Module | str | os.PathLike, **kwargs) -> Separator:
        """The official evaluation protocol: 8 s back-to-back segments, no overlap."""
        return cls(model_or_path, official=True, **kwargs)

    @property
    def outputs(self) -> list[str]:
        """Every stem name :meth:`separate` returns."""
        return output_names(self.stems)

    # -- streaming --------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Segments per forward pass now (halved after CUDA ran out of memory)."""
        return self._batch.size

    @property
    def compiled(self) -> bool:
        """Whether the model's Mamba modules run through ``torch.compile``."""
        return self.runner.compiled

    def _auto_compile(self, bar: tqdm, report: ProgressReporter) -> AutoCompile | None:
        """``compile="auto"`` on the CPU, not compiled yet: the decision for this input."""
        if self.compile_mode != "auto" or self.compiled or self.device.type != "cpu":
            return None
        total = None
        if bar.total is not None:  # an input of unknown length stays eager
            segments = self.chunking.segments_for(round(bar.total * self.config.sample_rate))
            total = len(self.shift_samples) * segments

        def compile_for_the_rest(eager: float) -> None:
            report.report("compiling")
            self.runner.compile()
            if self.progress:
                more = f"{eager / 60:.0f} min" if eager >= 120 else f"{eager:.0f} s"
                tqdm.write(f"{bar.desc}: compiling the Mamba-2 modules for the rest (eager would take "
                           f"~{more} more; --compile no to skip); cached on disk after")

        return AutoCompile(total, compile_for_the_rest, self.runner.compile_is_warm)

    def _stream(
        self,
        blocks: Iterable[np.ndarray],
        in_rate: int,
        out_rate: int,
        channels: int,
        bar: tqdm,
        report: ProgressReporter,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]] | Step]:
        """(mixture, {stem: audio}) blocks at ``out_rate`` for (channels, n) input blocks: the
        engine at the model's rate, resampled on both sides, paired with the mixture; and
        the two :class:`Step` marks, where another input may take a turn."""
        rows = len(self.stems) * channels
        engine = SegmentStream(self.runner.submit, self.chunking, channels, rows, self._batch,
                               self.shift_samples, self._auto_compile(bar, report))
        to_model = StreamResampler(in_rate, self.config.sample_rate, channels)
        mix_out = StreamResampler(in_rate, out_rate, channels)
        stems_out = StreamResampler(self.config.sample_rate, out_rate, rows)
        mixture, separated = Fifo(channels), Fifo(rows)
        started = False

        def push(done: np.ndarray) -> None:
            if done.shape[1]:
                separated.push(stems_out(done))

        for block in blocks:
            mixture.push(mix_out(block))
            push(engine.feed(to_model(block)))
            yield from self._paired(mixture, separated, out_rate, bar, report)
            if engine.submitted and not started:
                started = True
                yield Step.FIRST_BATCH
        mixture.push(mix_out.flush())
        push(engine.feed(to_model.flush()))
        push(engine.end())
        yield from self._paired(mixture, separated, out_rate, bar, report)
        yield Step.LAST_BATCH
        for done in engine.drain():
            push(done)
            yield from self._paired(mixture, separated, out_rate, bar, report)
        separated.push(stems_out.flush())
        yield from self._paired(mixture, separated, out_rate, bar, report, final=True)

    def _paired(
        self,
        mixture: Fifo,
        separated: Fifo,
        out_rate: int,
        bar: tqdm,
        report: ProgressReporter,
        final: bool = False,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """The mixture and the stems as far as both are there (at the end: all, the stems
        padded, as resampling can leave them a sample short), with the accompaniment."""
        n_stems, channels = len(self.stems), mixture.rows
        n = len(mixture)
        if final:
            separated.push(np.zeros((n_stems * channels, max(0, n - len(separated))), np.float32))
        n = min(n, len(separated))
        if not n:
            return
        mix = mixture.pop(n)
        stems = separated.pop(n).reshape(n_stems, channels, n)
        out = {name: stems[i] for i, name in enumerate(self.stems)}
        if n_stems == 1:
            out[ACCOMPANIMENT] = mix - stems[0]
        if bar.total is not None and bar.n + n / out_rate > bar.total:  # lengths from ffprobe are estimates
            bar.total = bar.n + n / out_rate
        bar.update(n / out_rate)
        report.advance(n / out_rate)
        yield mix, out

    def _bar(self, seconds: float | None, desc: str) -> tqdm:
        """Seconds of audio done (the total is unknown for some ffmpeg inputs)."""
        known = "{percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]"
        return tqdm(
            total=None if seconds is None else round(seconds, 2),
            desc=desc,
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
            bar_format="{desc}: " + (known if seconds else "{n:.1f} s [{elapsed}]"),
        )

    # -- public API -------------------------------------------------------------------------

    def separate(
        self,
        audio: np.ndarray | torch.Tensor,
        sample_rate: int,
        on_progress: ProgressCallback | None = None,
    ) -> dict[str, np.ndarray]:
        """The stems of an array.

        Floats are taken as they are (full scale 1.0); integer PCM (int8, uint8, int16,
        int32) is scaled to [-1, 1) first, as soundfile reads it (int16 / 32768).

        Args:
            audio: (channels, samples) or (samples,), numpy or torch, mono or stereo.
            sample_rate: of ``audio``, any (resampled to the model's and back).
            on_progress: gets a :class:`~bsmamba2.separation.progress.Progress` per block.

        Returns:
            {stem: float32 array shaped like ``audio``, at ``sample_rate``}; for a one-stem
            model, ``vocals`` and ``accompaniment`` (= audio − vocals, sample by sample).

        Raises:
            AudioError: a bad shape, rate, channel count, or NaN/infinite samples.
        """
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu().numpy()
        audio = pcm_to_float(np.asarray(audio))
        mono = audio.ndim == 1
        wav = audio[None] if mono else audio
        if wav.ndim != 2:
            raise AudioError(f"audio: expected shape (channels, samples) or (samples,), got {audio.shape}")
        if wav.shape[0] > 2 and wav.shape[1] <= 2:
            raise AudioError(f"audio: shape {audio.shape} looks like (samples, channels); pass audio.T")
        check_channels(wav.shape[0], "audio")
        if not wav.shape[1]:
            raise AudioError("audio: zero-length audio (0 samples)")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise AudioError(f"audio: invalid sample rate {sample_rate!r}")
        check_finite(wav, "audio", 0, int(sample_rate))
        blocks = (wav[:, i : i + BLOCK] for i in range(0, wav.shape[1], BLOCK))
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.outputs}
        rate, seconds = int(sample_rate), wav.shape[1] / sample_rate
        report = ProgressReporter(on_progress, "audio", seconds)
        with _naming("audio"), self._bar(seconds, "separating") as bar:
            for item in self._stream(blocks, rate, rate, wav.shape[0], bar, report):
                if not isinstance(item, Step):
                    for name, part in item[1].items():
                        parts[name].append(part)
        report.finish()
        result = {name: np.concatenate(p, axis=1) for name, p in parts.items()}
        return {name: r[0] if mono else r for name, r in result.items()}

    def output_paths(
        self,
        path: str | os.PathLike,
        outdir: str | os.PathLike,
        stems: Sequence[str] | None = None,
        filename: str = DEFAULT_TEMPLATE,
        fmt: str = "wav",
    ) -> dict[str, Path]:
        """Where :meth:`separate_file` writes each selected stem (``filename`` is a template
        with ``{track} {stem} {ext} {model}``, relative to ``outdir``).
        """
        return output_paths(path, outdir, self.outputs, self.name, stems, filename, fmt)

    def separate_file(
        self,
        path: str | os.PathLike,
        outdir: str | os.PathLike,
        stems: Sequence[str] | None = None,
        filename: str = DEFAULT_TEMPLATE,
        fmt: str = "wav",
        bit_depth: str | None = None,
        sample_rate: int | None = None,
        overwrite: bool = False,
        plot: bool = False,
        on_progress: ProgressCallback | None = None,
        bitrate: int | None = None,
        start: float = 0.0,
        duration: float | None = None,
    ) -> SeparatedFile:
        """Separate one file into ``outdir``, block by block: files appear only when complete,
        and a failure leaves no partial file (nor an empty folder made for it).

        Args:
            path: the input, any format soundfile or ffmpeg reads.
            outdir: the output folder.
            stems: the stems to write (default: all of :attr:`outputs`).
            filename: the output path under ``outdir``, a template with the fields
                ``{track} {stem} {ext} {model}``.
            fmt: ``wav``, ``flac``, ``mp3``, ``ogg`` or ``opus``; WAV outputs beyond 4 GB are
                written as RF64 (:func:`~bsmamba2.audio.io.wav_container`).
            bit_depth: ``16``, ``24`` or ``float`` for WAV and FLAC (default: float WAV, 24-bit
                FLAC).
            sample_rate: of the outputs (default: the input's, or the next one MP3 or Opus can
                store: :func:`~bsmamba2.audio.io.output_rate`).
            overwrite: replace existing outputs (default: keep them, :class:`OutputExistsError`).
            plot: also write a PNG of the spectrograms of the mixture and the stems.
            on_progress: gets a :class:`~bsmamba2.separation.progress.Progress` per block (stages
                separating, compiling, plotting, done; ``file`` the input's name).
            bitrate: kbps for MP3 and Opus (default 320 and 256).
            start: a preview: seconds into the input to begin at (only the part is decoded).
            duration: a preview: seconds to separate (default: to the end).

        Returns:
            {stem: path}, plus ``"plot"`` for the PNG when ``plot`` is set; its ``duration``,
            ``peaks`` and ``clipped`` say how long and how loud the stems are
            (:class:`~bsmamba2.separation.files.SeparatedFile`).

        Raises:
            OutputExistsError: outputs already there and not ``overwrite`` (nothing changed).
            AudioError: an input that cannot be read, or bad output settings.
            WriteError: an output that cannot be written (a full disk, a read-only folder).

        Integer and lossy outputs beyond full scale are clipped with a :class:`ClippingWarning`.
        What a killed run left beside the outputs (temporary files no one writes) goes first.
        """
        steps = self.separate_file_steps(
            path, outdir, stems, filename, fmt, bit_depth, sample_rate, overwrite, plot, on_progress,
            bitrate, start, duration,
        )
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value

    def separate_file_steps(
        self,
        path: str | os.PathLike,
        outdir: str | os.PathLike,
        stems: Sequence[str] | None = None,
        filename: str = DEFAULT_TEMPLATE,
        fmt: str = "wav",
        bit_depth: str | None = None,
        sample_rate: int | None = None,
        overwrite: bool = False,
        plot: bool = False,
        on_progress: ProgressCallback | None = None,
        bitrate: int | None = None,
        start: float = 0.0,
        duration: float | None = None,
    ) -> Generator[Step, None, SeparatedFile]:
        """:meth:`separate_file` (the same arguments) as a generator that pauses at its two
        :class:`Step` marks and returns the :class:`SeparatedFile`: after its first batch was
        started and after its last one was, so that a caller can begin the next file there
        while the device still runs this one's (:func:`~bsmamba2.separation.files.run_jobs`).
        Closing it before the end removes the partial outputs, as an error does."""
        subtype = subtype_for(fmt, bit_depth)
        if plot:
            require_extra("the spectrogram plot (plot=True, --plot)", "plot")
        if sample_rate is not None and sample_rate <= 0:
            raise BSMamba2Error(f"invalid output sample rate {sample_rate}")
        paths = self.output_paths(path, outdir, stems, filename, fmt)
        plot_path = paths[next(iter(paths))].with_name(f"{Path(path).stem}.png") if plot else None
        targets = [*paths.values(), *([plot_path] if plot_path else [])]
        source_id = Path(path).resolve()
        if any(t.resolve() == source_id for t in targets):
            raise BSMamba2Error(
                f"{path}: an output would overwrite the input; choose another -o or --filename"
            )
        existing = [str(t) for t in targets if t.exists()]
        if existing and not overwrite:
            raise OutputExistsError(f"{path}: skipped, {existing[0]} exists (use --overwrite to replace)")
        for target in targets:  # what a killed run left behind
            remove_stale_temporaries(target)
        with _naming(path), open_audio(path, start, duration) as source, contextlib.ExitStack() as outputs:
            report = ProgressReporter(on_progress, Path(path).name, source.duration)
            rate = output_rate(fmt, source.samplerate, sample_rate)
            compression_level(fmt, bitrate, rate, source.channels)  # a bad --bitrate fails before any work
            sketches = {name: SpectrogramSketch(rate) for name in (MIXTURE, *paths)} if plot else {}
            container = wav_container(fmt, source.duration, rate, source.channels, subtype)
            settings = (rate, source.channels, subtype, container, bitrate)
            writers = {
                stem: outputs.enter_context(audio_writer(target, *settings)) for stem, target in paths.items()
            }  # an exception anywhere removes every partial output
            # Decoding runs ahead in a thread, each output is written behind in its own: beside the model.
            # The writers' threads start first: a thread starts only when it gets the GIL, which
            # a running decoder hands over every switch interval (5 ms), late for the first batch.
            with self._bar(source.duration, Path(path).name) as bar, Outputs(writers, sketches) as writing, \
                    Ahead(source.blocks()) as blocks:
                for item in self._stream(blocks, source.samplerate, rate, source.channels, bar, report):
                    if isinstance(item, Step):
                        yield item
                    else:
                        writing.write(*item)
        peaks = {stem: writer.peak for stem, writer in writers.items()}
        result = SeparatedFile(paths, report.done, peaks, [s for s, w in writers.items() if w.clipped])
        for writer in writers.values():
            if writer.clipped:
                warnings.warn(peak_warning(writer), ClippingWarning, stacklevel=2)
        if plot_path:
            report.report("plotting")
            result["plot"] = save_spectrograms(sketches, plot_path, f"{Path(path).name} ({self.name})")
        report.finish()
        return result
