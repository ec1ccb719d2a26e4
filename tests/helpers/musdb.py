"""A small generated MUSDB18-HQ folder for the data and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

STEMS = ("vocals", "drums", "bass", "other")
SR = 44100
#: Two of musdb's official validation songs, so that musdb's split puts them in "valid".
VALID = ("Actions - One Minute Smile", "Leaf - Summerghost")


def make_musdb(root: Path, n_train: int = 3, seconds: float = 4.0, seed: int = 0) -> Path:
    """``root/{train,test}/{track}/{mixture,vocals,drums,bass,other}.wav``: noise with a random
    loudness per 0.25 s, vocals silent in their second quarter."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    names = [("train", f"Train Song {i}") for i in range(n_train)]
    names += [("train", v) for v in VALID] + [("test", "Test Song 0")]
    for subset, name in names:
        folder = root / subset / name
        folder.mkdir(parents=True)
        stems = {}
        for stem in STEMS:
            envelope = np.repeat(rng.uniform(0.2, 1.0, size=(2, int(seconds * 4))), SR // 4, axis=1)[:, :n]
            audio = (0.1 * rng.standard_normal((2, n)) * envelope).astype(np.float32)
            if stem == "vocals":
                audio[:, n // 4 : n // 2] = 0
            stems[stem] = audio
            sf.write(folder / f"{stem}.wav", audio.T, SR, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems.values()).T, SR, subtype="FLOAT")
    return root
