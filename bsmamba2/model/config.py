"""The BSMamba2 hyper-parameters; the defaults are the paper's configuration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Bins per band (62 bands, 1025 bins): 24×2, 12×4, 8×12, 8×24, 8×48, then 128 and 129.
PAPER_BANDS: tuple[int, ...] = (
    (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)
)


@dataclass(frozen=True)
class BSMamba2Config:
    """Everything needed to build the network and its STFT front end."""

    dim: int = 256
    depth: int = 6
    expand: int = 4
    headdim: int = 64
    d_state: int = 128
    ngroups: int = 1
    d_conv: int = 4
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
        object.__setattr__(self, "bands", tuple(int(b) for b in self.bands))
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        if self.targets and len(self.targets) != self.n_stems:
            raise ValueError(f"{len(self.targets)} target names for {self.n_stems} stems")
        if sum(self.bands) != self.n_fft // 2 + 1:
            raise ValueError(
                f"bands cover {sum(self.bands)} bins, the STFT has {self.n_fft // 2 + 1}"
            )
        if self.d_inner % self.headdim:
            raise ValueError(f"expand·dim = {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise ValueError(f"{self.nheads} heads cannot be split into {self.ngroups} groups")

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
        return d

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
