"""Compiling the model's GPU kernels before the first segment, several at a time.

On an empty Triton cache the first batch would compile each kernel variant it meets one
after the other. Most of a compile is spent outside Python (LLVM, ``ptxas``), so compiles
started from several threads overlap. :func:`warm_up` launches what a segment meets in the
first layer, on sequences of the real length, layout and dtype (one time-axis sequence of a
segment's frames, one band-axis sequence of the bands), in two rounds of parallel threads:

1. every kernel once: the block's norm and, for a mixer that offers its stages on their own
   (``warm_up_calls``: Mamba-2's conv, scan and gated norm, each on inputs laid out as its
   forward lays them out), each stage of the time axis and the band axis's scan (the one
   kernel whose variant depends on the length), plus the STFT round trip; a mixer without
   stages runs its whole blocks here;
2. the rest (the band axis's other stages, the backward direction's): mostly variants
   compiled in round 1, so cache hits, but whatever is new compiles here, again at once.

A variant compiled twice at the same time would cost its compile twice, hence the rounds.
The first real batch finds the kernels ready. Outputs are dropped; nothing in the model
changes.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from bsmamba2.device import autocast, current_gpu
from bsmamba2.model import stft
from bsmamba2.separation.inverse import istft

Call = Callable[[], object]


def warm_up(model: torch.nn.Module, segment_samples: int, precision: str, device: torch.device) -> None:
    """Launch what a segment of ``segment_samples`` samples meets in ``model`` (a BSMamba2 on
    ``device``) once, in parallel threads; a model without BSMamba2's layers is left alone.
    Errors are raised here, as the first batch would raise them. The separator calls it on
    CUDA (on the CPU there is nothing to compile)."""
    layers = getattr(model, "layers", None)
    if not layers:
        return
    config = model.config
    frames = segment_samples // config.hop_length + 1
    with current_gpu(device), torch.inference_mode(), autocast(precision, device):  # the blocks' input dtype
        features = torch.zeros(1, 1, 2 * config.channels * sum(config.bands), device=device)
        dtype = model.band_split(features).dtype

    def sequence(length: int) -> torch.Tensor:
        return torch.zeros(1, length, config.dim, device=device, dtype=dtype)

    def spectrogram() -> None:
        audio = torch.zeros(1, config.channels, segment_samples, device=device)
        istft(stft(audio, config).unsqueeze(1), config, length=segment_samples)

    first: list[Call] = [spectrogram]
    then: list[Call] = []
    time_module, band_module = layers[0]
    for axis, (bidirectional, length) in enumerate(((time_module, frames), (band_module, len(config.bands)))):
        blocks = (bidirectional.forward_blocks[0], bidirectional.backward_blocks[0])
        for direction, block in enumerate(blocks):
            u = sequence(length)
            stages = getattr(block.mixer, "warm_up_calls", None)
            if stages is None:
                first.append(lambda block=block, u=u: block(u))
                continue
            calls = {"block norm": lambda block=block, u=u: block.norm(u)}
            with torch.inference_mode(), autocast(precision, device):
                calls.update(stages(u))
            for name, call in calls.items():
                new = direction == 0 and (axis == 0 or name == "scan")
                (first if new else then).append(call)
    for round_ in (first, then):
        _in_threads(round_, precision, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _in_threads(calls: list[Call], precision: str, device: torch.device) -> None:
    """Each call in its own thread (inference mode and autocast are per thread); the first
    error is raised."""

    def run(call: Call) -> None:
        with current_gpu(device), torch.inference_mode(), autocast(precision, device):
            call()

    if not calls:
        return
    with ThreadPoolExecutor(len(calls), thread_name_prefix="bsmamba2-warmup") as pool:
        for future in [pool.submit(run, call) for call in calls]:
            future.result()
