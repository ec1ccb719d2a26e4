"""How many segments go through the model at once: ``--batch-size auto`` and the OOM fallback.

On the CPU one segment already keeps every core busy, and more only cost RAM: auto is 1.
On a GPU one 8 s segment leaves most of the card idle (the time-axis scan runs 62 sequences),
so auto fills half of the free memory, estimated from the size of the largest activation,
the mixer's widest (its ``activation_width()``: ``in_proj``'s output, e.g. Mamba-2's
z | x | B | C | dt, for every band and frame), times a factor for the other tensors alive at
the same time (the 60 s paper-model pass on an H100 peaks at 5.6 GB, 3.2× its in_proj output
in bf16: :data:`ACTIVATION_FACTOR` leaves margin). The estimate is the kernels' (CUDA): the
CPU's PyTorch reference ops hold larger intermediates. On an H200 one 8 s segment of the paper
model peaked at 852 MiB with Mamba-2 and 903 MiB with Mamba-1 (estimates 1319 and 1164), but
at 4415 MiB with Mamba-3 (estimate 1355; tests/separation/test_batching.py records it).
An estimate can still be wrong on a busy card, so the separator halves the batch when CUDA
runs out of memory and carries on (:func:`smaller_batch`). A segment or an explicit batch
whose estimate exceeds all the memory there is (:func:`check_memory`) would only end in an
out-of-memory kill after minutes of work: an error, or fewer segments with a warning.
"""

from __future__ import annotations

import os
import warnings

import torch

from bsmamba2.errors import BSMamba2Error, ParameterError
from bsmamba2.model import BSMamba2Config
from bsmamba2.model.mixers import mixer_activation_width

ACTIVATION_FACTOR = 6.0
"""Peak inference memory of one segment, in multiples of its in_proj output."""
MAX_AUTO_BATCH = 4
"""Beyond this the GPU is busy anyway and larger batches only delay the host's share: the
engine adds and writes one batch while the GPU runs the next, so smaller batches overlap
more of it. Paper model, 8 s segments, H200: 16.95 ms of GPU per segment in batches of 4,
16.11 in batches of 16, but a 1-minute file 0.34 s against 0.39 s (docs/benchmarks.md)."""


def segment_bytes(config: BSMamba2Config, segment_samples: int, element_bytes: int) -> int:
    """Estimated peak memory of the model's forward pass on one segment."""
    frames = segment_samples // config.hop_length + 1
    width = mixer_activation_width(config.mixer, config.dim, config.mixer_kwargs)
    return int(ACTIVATION_FACTOR * len(config.bands) * frames * width * element_bytes)


def memory_bytes(device: torch.device) -> int | None:
    """All the memory there is: the GPU's on CUDA, the machine's RAM on the CPU (None if unknown)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def check_memory(
    config: BSMamba2Config, segment_samples: int, batch_size: int, device: torch.device, precision: str
) -> int:
    """``batch_size``, or as many segments as the estimate fits in all of ``device``'s memory
    (with a warning); an error when a single segment does not fit."""
    total = memory_bytes(device)
    if total is None:
        return batch_size
    per_segment = segment_bytes(config, segment_samples, 4 if precision == "fp32" else 2)
    seconds = segment_samples / config.sample_rate
    if per_segment > total:
        raise ParameterError(
            "segment",
            f"segment of {seconds:g} s needs ~{per_segment / 2**30:.1f} GiB per model call (estimate), more "
            f"than the {total / 2**30:.1f} GiB of memory on {device.type}: use a shorter segment",
        )
    fits = max(1, total // per_segment)
    if batch_size <= fits:
        return batch_size
    warnings.warn(
        f"batch size {batch_size}: that many {seconds:g} s segments need "
        f"~{batch_size * per_segment / 2**30:.0f} GiB (estimate), more than the "
        f"{total / 2**30:.1f} GiB of memory on {device.type}: using {fits}",
        stacklevel=3,
    )
    return fits


def auto_batch_size(
    config: BSMamba2Config, segment_samples: int, device: torch.device, precision: str
) -> int:
    """``--batch-size auto``: 1 on the CPU; on CUDA, what fits in half of the free memory."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_segment = segment_bytes(config, segment_samples, 4 if precision == "fp32" else 2)
    return max(1, min(MAX_AUTO_BATCH, int(0.5 * free) // per_segment))


def smaller_batch(batch_size: int, segment_seconds: float) -> int:
    """The batch to retry with after CUDA ran out of memory with ``batch_size`` segments."""
    if batch_size <= 1:
        raise BSMamba2Error(
            f"out of GPU memory separating one {segment_seconds:g} s segment: "
            "use a shorter --segment, or --device cpu"
        )
    return batch_size // 2
