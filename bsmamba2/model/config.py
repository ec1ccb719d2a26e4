"""The BSMamba2 hyper-parameters; the defaults are the paper's configuration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bsmamba2.model.mixers import SHARED_OPTIONS, mixer_defaults

# Bins per band (62 bands, 1025 bins): 24×2, 12×4, 8×12, 8×24, 8×48, then 128 and 129.
PAPER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)


@dataclass(frozen=True)
class BSMamba2Config:
    """Everything needed to build the network and its STFT front end."""

    dim: int = 256
    depth: int = 6
    # The sequence mixer of every bidirectional block, by name (bsmamba2.model.mixers.MIXERS).
    mixer: str = "mamba2"
    # The mixer's options shared by name across mixers; None: the mixer's default (the
    # paper's for Mamba-2: expand 4, headdim 64, d_state 128, ngroups 1, d_conv 4). Left
    # None when the mixer has no such option.
    expand: int | None = None
    headdim: int | None = None
    d_state: int | None = None
    ngroups: int | None = None
    d_conv: int | None = None
    # The mixer's other options (its own names); missing ones take the mixer's defaults.
    mixer_options: dict[str, Any] = field(default_factory=dict, hash=False)
    mask_mlp_expansion: int = 4
    n_stems: int = 1
    # Names of the separated stems, in output order; empty: "vocals" for one stem, else stem1...
    targets: tuple[str, ...] = ()
    stereo: bool = True
    bands: tuple[int, ...] = field(default=PAPER_BANDS)
    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 441

    def __post_init__(self) -> None:
        self._resolve_mixer_options()
        object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        if self.targets and len(self.targets) != self.n_stems:
            raise ValueError(f"{len(self.targets)} target names for {self.n_stems} stems")
        if sum(self.bands) != self.n_fft // 2 + 1:
            raise ValueError(
                f"bands cover {sum(self.bands)} bins, the STFT has {self.n_fft // 2 + 1}"
            )
        if self.expand is not None and self.headdim is not None:
            if self.d_inner % self.headdim:
                raise ValueError(f"expand·dim = {self.d_inner} is not a multiple of headdim {self.headdim}")
            if self.ngroups is not None and self.nheads % self.ngroups:
                raise ValueError(f"{self.nheads} heads cannot be split into {self.ngroups} groups")

    def _resolve_mixer_options(self) -> None:
        """Fill what the user left unset with the mixer's defaults; reject options it lacks."""
        defaults = mixer_defaults(self.mixer)
        for name in SHARED_OPTIONS:
            if name in defaults:
                if getattr(self, name) is None:
                    object.__setattr__(self, name, defaults[name])
            elif getattr(self, name) is not None:
                raise ValueError(f"the {self.mixer} mixer has no option {name!r}")
        own = {k: v for k, v in defaults.items() if k not in SHARED_OPTIONS}
        unknown = sorted(set(self.mixer_options) - set(own))
        if unknown:
            raise ValueError(f"unknown mixer_options for {self.mixer}: {', '.join(unknown)} "
                             f"(it takes {', '.join(own) or 'none'}; {', '.join(SHARED_OPTIONS)} are fields)")
        object.__setattr__(self, "mixer_options", {**own, **self.mixer_options})

    @property
    def mixer_kwargs(self) -> dict[str, Any]:
        """The keywords the mixer is built with: its shared options and ``mixer_options``."""
        shared = {name: getattr(self, name) for name in SHARED_OPTIONS if getattr(self, name) is not None}
        return {**shared, **self.mixer_options}

    @property
    def d_inner(self) -> int:
        return self.expand * self.dim

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def channels(self) -> int:
        return 2 if self.stereo else 1

    @property
    def stem_names(self) -> tuple[str, ...]:
        """The stems in output order: ``targets``, or ``vocals`` / ``stem1``, ``stem2``..."""
        if self.targets:
            return self.targets
        return ("vocals",) if self.n_stems == 1 else tuple(f"stem{i + 1}" for i in range(self.n_stems))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (JSON/YAML safe)."""
        d = dataclasses.asdict(self)
        d["bands"] = list(self.bands)
        d["targets"] = list(self.targets)
        d["mixer_options"] = dict(self.mixer_options)
        return d

    def replace(self, **changes: Any) -> BSMamba2Config:
        """A copy with ``changes`` (validated, unknown keys rejected). A new ``mixer`` starts
        from its own defaults: the old mixer's options go unless given again."""
        data = self.to_dict()
        if changes.get("mixer", self.mixer) != self.mixer:
            for name in (*SHARED_OPTIONS, "mixer_options"):
                del data[name]
        return BSMamba2Config.from_dict({**data, **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BSMamba2Config:
        """Build from a mapping; unknown keys are an error so typos don't pass silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown BSMamba2 config keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> BSMamba2Config:
        """Read a config file such as ``configs/bsmamba2.yaml`` (keys under ``model:``)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data.get("model", data))
