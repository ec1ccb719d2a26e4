"""The models one ``bsmamba2 serve`` offers: the page's model picker and the models behind it.

A :class:`ModelChoice` is what the page shows before anything loads (name, mixer, file size,
whether a known checkpoint is downloaded yet, the stems it gives). :class:`ModelShelf` loads
each model the first time a job asks for it, shares it with every later job, and keeps at most
``max_loaded`` loaded: loading one more first drops the least recently used (a job still
running on it keeps its reference until it ends).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bsmamba2.checkpoint.io import checkpoint_config
from bsmamba2.checkpoint.registry import KNOWN, KnownCheckpoint, resolve
from bsmamba2.checkpoint.remote import is_remote, split_sha256
from bsmamba2.errors import BSMamba2Error
from bsmamba2.separation import Separator
from bsmamba2.separation.naming import output_names
from bsmamba2.web.errors import JobError

Loaded = dict[bool, Separator]
"""A loaded model's separators by their ``tta`` setting (both when the page may choose)."""


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the page's model picker.

    ``weights`` is a checkpoint path or a known checkpoint's name (downloaded on first use);
    ``size`` the file's bytes (None: unknown, a model handed over already loaded).
    """

    name: str
    weights: str
    mixer: str
    outputs: tuple[str, ...]
    size: int | None = None
    known: KnownCheckpoint | None = None

    @property
    def cached(self) -> bool:
        """Whether the weights are on this machine (a known checkpoint may still be missing)."""
        return self.known is None or self.known.cached

    @classmethod
    def from_weights(cls, weights: str) -> ModelChoice:
        """A checkpoint file (its architecture read from it now, so a bad file fails at start),
        an address (fetched into the cache now, then read as a file; named after its file), or
        a known checkpoint's name that is not also a file (read when first used)."""
        if weights in KNOWN and not Path(weights).exists():
            known = KNOWN[weights]
            outputs = tuple(output_names(known.targets))
            return cls(known.name, known.name, known.mixer, outputs, known.size, known)
        path = resolve(weights)
        name = Path(split_sha256(weights)[0].rsplit("/", 1)[-1]).stem if is_remote(weights) else path.stem
        config = checkpoint_config(path)
        return cls(name, weights, config.mixer, tuple(output_names(config.stem_names)), path.stat().st_size)


def model_choices(checkpoints: Sequence[str] = (), names: Sequence[str] = ()) -> list[ModelChoice]:
    """What ``serve``'s flags offer: every ``--checkpoint`` (a path or a known name), then every
    ``--model``; with neither, ``$BSMAMBA2_CHECKPOINT`` when set, then every known checkpoint.
    Names must differ (they are how the page and the API pick a model)."""
    wanted = [*checkpoints, *names]
    if not wanted:
        default = os.environ.get("BSMAMBA2_CHECKPOINT")
        wanted = [*([default] if default else []), *(k for k in KNOWN if k != default)]
    choices: dict[str, ModelChoice] = {}
    for weights in dict.fromkeys(wanted):
        choice = ModelChoice.from_weights(weights)
        if choice.name in choices:
            raise BSMamba2Error(f"two models named {choice.name!r} ({choices[choice.name].weights} and "
                                f"{weights}): the page tells models apart by file name; rename one")
        choices[choice.name] = choice
    return list(choices.values())


class ModelShelf:
    """The models of one server (the first is the page's default), loaded lazily and shared.

    Args:
        choices: what the page offers.
        load: loads one choice into its separators (:data:`Loaded`).
        device: where the models run (one job at a time unless it is the CPU).
        tta: the server's TTA setting, for jobs that do not choose.
        max_loaded: models kept loaded at once, at least 1.
        tta_choice: whether ``load`` gives both TTA settings, so that a job may choose.
    """

    def __init__(
        self,
        choices: Sequence[ModelChoice],
        load: Callable[[ModelChoice], Loaded],
        device: torch.device,
        tta: bool = False,
        max_loaded: int = 2,
        tta_choice: bool = True,
    ) -> None:
        if not choices:
            raise BSMamba2Error("no models to serve")
        if max_loaded < 1:
            raise BSMamba2Error(f"--max-models must be at least 1, got {max_loaded}")
        self.choices = {choice.name: choice for choice in choices}
        self.default = choices[0].name
        self.device, self.tta, self.max_loaded, self.tta_choice = device, tta, max_loaded, tta_choice
        self._load = load
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was loaded (a test's view of the laziness)

    @classmethod
    def of(cls, separator: Separator, twin: Separator | None = None) -> ModelShelf:
        """A shelf of one model already loaded, and its ``twin`` with the other TTA setting."""
        loaded = {separator.tta: separator, **({twin.tta: twin} if twin is not None else {})}
        choice = ModelChoice(separator.name, separator.name, separator.config.mixer, tuple(separator.outputs))
        shelf = cls([choice], lambda choice: loaded, separator.device, separator.tta, 1, twin is not None)
        shelf.separator(choice.name)
        shelf.loads = 0
        return shelf

    def choice(self, name: str) -> ModelChoice:
        """The entry named ``name``, or a one-line refusal naming those there are."""
        if name not in self.choices:
            raise JobError(f"unknown model {name!r} (this server offers: {', '.join(self.choices)})")
        return self.choices[name]

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._loaded

    def separator(self, name: str, tta: bool | None = None) -> Separator:
        """The separator of model ``name`` with ``tta`` (None: the server's setting), loading
        the model first if it is not (dropping the least recently used beyond ``max_loaded``)."""
        choice = self.choice(name)
        with self._lock:  # one load at a time; a worker wanting a loaded model waits for it
            loaded = self._loaded.pop(name, None)
            if loaded is None:
                while len(self._loaded) >= self.max_loaded:
                    self._loaded.popitem(last=False)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                loaded = self._load(choice)
                self.loads += 1
            self._loaded[name] = loaded
        wanted = self.tta if tta is None else tta
        if wanted not in loaded:
            raise JobError(f"this server runs with TTA {'on' if self.tta else 'off'} only")
        return loaded[wanted]

    def describe(self) -> list[dict]:
        """The picker's entries, in order: name, mixer, file size, cached, loaded, stems."""
        with self._lock:
            loaded = set(self._loaded)
        return [
            {"name": c.name, "mixer": c.mixer, "size": c.size, "cached": c.cached, "loaded": c.name in loaded,
             "stems": list(c.outputs)}
            for c in self.choices.values()
        ]
