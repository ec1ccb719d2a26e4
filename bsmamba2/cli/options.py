"""The options of every command that runs a model (``separate``, ``serve``, ``evaluate``),
declared once: the weights, the device and precision, the chunking and its augmentations.

Defaults come from the library's constants, each value is parsed one way everywhere
(``--batch-size auto|N``), and :func:`load_separator` builds the :class:`Separator` they
describe, turning a library error that names a parameter into one that names its flag.
Nothing here loads torch: the commands check their inputs first.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import bsmamba2
from bsmamba2.checkpoint.registry import KNOWN, resolve_weights
from bsmamba2.device import DEVICES, PRECISIONS
from bsmamba2.errors import BSMamba2Error, ParameterError
from bsmamba2.separation.chunking import DEFAULT_OVERLAP, DEFAULT_SEGMENT

if TYPE_CHECKING:
    import torch

    from bsmamba2.separation import Separator

Options = argparse.ArgumentParser | argparse._ArgumentGroup
PACKAGE = Path(bsmamba2.__file__).resolve().parent
FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in ("segment", "overlap", "batch_size", "official", "shifts", "device", "precision")
}
"""The flag of each Separator parameter the library's errors name."""


def batch_size(text: str) -> int | str:
    """``--batch-size``: ``auto`` or a whole number (the Separator checks that it is ≥ 1)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}") from None


def positive(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def add_weight_options(p: Options, many: bool = False) -> None:
    """``--checkpoint PATH`` or ``--model NAME``, and ``--ema``; with ``many`` (``serve``'s
    model picker) both, each as often as wanted (lists)."""
    weights = p.add_argument_group() if many else p.add_mutually_exclusive_group()
    again = " (repeat for more models)" if many else ""
    weights.add_argument(
        "--checkpoint",
        metavar="PATH|URL",
        action="append" if many else "store",
        help="weights: any checkpoint bsmamba2 reads, a known name, an https:// URL (downloaded once "
        "into the cache, checked against the announced size) or hf://owner/repo[@revision]/file (a "
        "Hugging Face Hub file, needs the [hub] extra); append #sha256=HEX to a URL to have it verified"
        + again,
    )
    weights.add_argument(
        "--model",
        "-n",
        "--name",
        choices=sorted(KNOWN),
        action="append" if many else "store",
        help=f"weights: a known checkpoint, downloaded on first use (-n/--name as in demucs){again}",
    )
    p.add_argument(
        "--ema", action="store_true", help="use the EMA weights of an official Lightning checkpoint"
    )


def add_device_options(p: Options) -> None:
    """``--device`` and ``--precision``."""
    p.add_argument("-d", "--device", default="auto", help=f"{DEVICES} (default: %(default)s)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", *PRECISIONS],
        help="autocast precision; auto = bf16 on CUDA and on CPUs with AVX-512 BF16 or AMX, else fp32",
    )


def add_chunking_options(p: Options, official: bool = False) -> None:
    """``--segment``, ``--overlap``, ``--batch-size``, ``--tta`` and ``--shifts``. With
    ``official`` the defaults are the official protocol's (8 s back to back), as evaluate's."""
    segment = f"{DEFAULT_SEGMENT:g}, " + ("the official protocol" if official else "the training length")
    overlap = "0 (official protocol)" if official else f"{DEFAULT_OVERLAP:g}"
    p.add_argument("--segment", type=float, help=f"seconds per model call (default: {segment})")
    p.add_argument("--overlap", type=float, help=f"cross-faded fraction of a segment (default: {overlap})")
    p.add_argument(
        "--batch-size",
        type=batch_size,
        default="auto",
        help="segments per forward pass, or auto: 1 on the CPU, what fits in half the free memory "
        "on CUDA, halved if CUDA runs out of memory (default: %(default)s)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: each segment also channel-swapped and polarity-inverted, the "
        "three outputs averaged (as MSST's --use_tta); 3x the time (2x for mono)",
    )
    p.add_argument(
        "--shifts",
        type=positive,
        default=1,
        metavar="N",
        help="N passes over the input, all but the first delayed by a random amount up to "
        "0.5 s, averaged (as demucs's --shifts); N times the time (default: %(default)s)",
    )


def add_compile_option(p: Options) -> None:
    """``--compile [auto|yes|no]``."""
    p.add_argument(
        "--compile",
        nargs="?",
        const="yes",
        default="auto",
        choices=["auto", "yes", "no"],
        help="CPU: torch.compile the Mamba-2 modules (1.5-1.8x faster per segment after a compile "
        "of minutes on the first one, cached on disk); auto (the default) times the first segment "
        "on the CPU and compiles for the rest of the file when that saves time overall; "
        "--compile alone means yes",
    )


def add_separator_options(p: argparse.ArgumentParser, many_models: bool = False) -> None:
    """Everything :func:`load_separator` reads: shared by ``separate`` and ``serve`` (which
    takes ``many_models``: see :func:`add_weight_options`)."""
    add_weight_options(p, many_models)
    add_device_options(p)
    add_compile_option(p)
    add_chunking_options(p)


@contextlib.contextmanager
def reported_warnings(quiet: bool) -> Iterator[None]:
    """Warnings raised inside as one line each, every distinct message once; with ``quiet``
    only bsmamba2's own (clipping, out of memory, a failed compile), not the frameworks'."""
    from tqdm import tqdm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            said = set()
            for warning in caught:
                ours = Path(warning.filename).resolve().is_relative_to(PACKAGE)
                if str(warning.message) in said or (quiet and not ours):
                    continue
                said.add(str(warning.message))
                tqdm.write(f"bsmamba2: warning: {warning.message}", file=sys.stderr)


def separator_settings(args: argparse.Namespace, **settings) -> dict:
    """The :class:`Separator` arguments the options above ask for, but the weights;
    ``settings`` add to or replace them."""
    options = dict(
        device=args.device,
        segment=args.segment,
        overlap=args.overlap,
        batch_size=args.batch_size,
        precision=args.precision,
        ema=args.ema,
        compile={"yes": True, "no": False, "auto": "auto"}[getattr(args, "compile", "no")],
        tta=args.tta,
        shifts=args.shifts,
    )
    return {**options, **settings}


def load_separator(
    args: argparse.Namespace, progress: bool, model: torch.nn.Module | Path | None = None, **settings
) -> Separator:
    """The :class:`Separator` the options above ask for (torch and the model load here);
    ``model`` one already loaded (shared, not loaded again) or the weights already resolved,
    ``settings`` add to or replace the options. An error about a parameter names its flag."""
    from bsmamba2.separation import Separator

    weights = model if model is not None else resolve_weights(args.checkpoint, args.model, progress=progress)
    with flag_errors(), reported_warnings(getattr(args, "quiet", False)):
        return Separator(weights, **separator_settings(args, progress=progress, **settings))


@contextlib.contextmanager
def flag_errors() -> Iterator[None]:
    """A library error about a parameter as one naming its flag (``--overlap: ...``)."""
    try:
        yield
    except ParameterError as exc:
        raise BSMamba2Error(f"{FLAGS.get(exc.parameter, exc.parameter)}: {exc}") from None
