"""A small generated set in MUSDB18-HQ's layout, for running the smoke training and the
evaluation without the real data (``bsmamba2 prepare --demo DIR``).

Every song is synthesised from a seed: drums (kick, snare, hi-hat), a bass line, chords and a
sung-like melody (harmonics with vibrato, phrases with rests), each panned in stereo, at
44.1 kHz, 16-bit like MUSDB18-HQ; the mixture is the exact sum of the stems. It checks that
the pipeline runs; a model trained on it learns nothing about music. Two validation songs
carry names from musdb's official validation list, so musdb's split puts them in ``valid``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from bsmamba2.data.musdb import SAMPLE_RATE, STEMS, DatasetError, musdb_setup

FULL_SCALE = 32768  # 16-bit PCM: soundfile reads sample k as k / 32768
CHORDS = ((0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14))  # I vi IV V, semitones above the key


def _hz(semitones: np.ndarray | float, key: float) -> np.ndarray:
    return key * 2.0 ** (np.asarray(semitones) / 12)


def _tone(freq: np.ndarray, harmonics: int, tilt: float) -> np.ndarray:
    """Harmonics of a (time-varying) fundamental, amplitude 1/k**tilt, below Nyquist."""
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    out = np.zeros_like(phase)
    for k in range(1, harmonics + 1):
        out += np.where(k * freq < SAMPLE_RATE / 2, np.sin(k * phase) / k**tilt, 0.0)
    return out


def _notes(starts: np.ndarray, n: int, attack: float, decay: float) -> np.ndarray:
    """An envelope restarting at every sample index in ``starts``: linear attack, exponential decay."""
    t = np.arange(n)
    since = t - starts[np.clip(np.searchsorted(starts, t, side="right") - 1, 0, None)]
    since = np.where(t >= starts[0], since, 10**9) / SAMPLE_RATE
    return np.minimum(since / attack, 1.0) * np.exp(-since / decay)


def synthesize_song(seconds: float, seed: int) -> dict[str, np.ndarray]:
    """{stem: int16 (2, samples)} for the four MUSDB18 stems (16-bit, like MUSDB18-HQ)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    beat = 60 / rng.uniform(90, 130)
    key = 110 * 2 ** (rng.integers(0, 12) / 12)
    beats = np.arange(0, seconds, beat)
    bar = np.minimum((t / (4 * beat)).astype(int), 10**6)
    chord = np.array(CHORDS)[bar % len(CHORDS)]  # (n, 3)
    noise = rng.standard_normal(n)

    kicks = (beats[::2] * SAMPLE_RATE).astype(int)
    snares = (beats[1::2] * SAMPLE_RATE).astype(int)
    hats = (np.arange(0, seconds, beat / 2) * SAMPLE_RATE).astype(int)
    sweep = 50 + 70 * _notes(kicks, n, 0.001, 0.03)
    drums = 0.9 * np.sin(2 * np.pi * np.cumsum(sweep) / SAMPLE_RATE) * _notes(kicks, n, 0.001, 0.15)
    drums = drums + 0.4 * noise * _notes(snares, n, 0.001, 0.08)
    drums = drums + 0.15 * np.diff(noise, prepend=0.0) * _notes(hats, n, 0.0005, 0.02)

    bass = 0.5 * _tone(_hz(chord[:, 0] - 12, key), 6, 1.5) * _notes(kicks, n, 0.005, 0.6)
    other = sum(_tone(_hz(chord[:, i], 2 * key), 8, 2.0) for i in range(3)) * 0.12
    other *= 0.6 + 0.4 * np.sin(2 * np.pi * t / (4 * beat))

    step = rng.choice(len(CHORDS[0]), size=bar.max() * 8 + 8)  # a melody note per half beat
    note = np.array(CHORDS)[bar % len(CHORDS), step[(t / (beat / 2)).astype(int)]] + 12
    vibrato = 1 + 0.006 * np.sin(2 * np.pi * 5.5 * t)
    phrases = ((bar % 3) != 2) & (t > 2 * beat)  # two bars sung, one bar of rest
    onsets = (np.arange(0, seconds, beat / 2) * SAMPLE_RATE).astype(int)
    vocals = 0.35 * _tone(_hz(note, 2 * key) * vibrato, 12, 1.2) * _notes(onsets, n, 0.03, 0.5) * phrases

    stems = {}
    for name, mono in zip(STEMS, (vocals, drums, bass, other), strict=True):
        pan = rng.uniform(0.3, 0.7) if name != "vocals" else 0.5
        stereo = np.stack([mono * np.sqrt(1 - pan), mono * np.sqrt(pan)])
        stems[name] = np.round(stereo * 0.4 * FULL_SCALE).astype(np.int16)
    return stems


def make_demo(root: str | os.PathLike, n_train: int = 3, n_test: int = 2, seconds: float = 12.0) -> Path:
    """Write ``root/{train,test}/{song}/{mixture,vocals,drums,bass,other}.wav``: ``n_train``
    training songs, two validation songs (inside ``train/``, as in MUSDB18-HQ) and ``n_test``
    test songs of ``seconds`` each. ``root`` must not exist yet; it appears only complete."""
    root = Path(root)
    if root.exists():
        raise DatasetError(f"{root} already exists; choose a new folder for the demo set")
    valid = musdb_setup()["validation_tracks"][:2]
    songs = [("train", f"Demo Song {i + 1}") for i in range(n_train)]
    songs += [("train", name) for name in valid]
    songs += [("test", f"Demo Test Song {i + 1}") for i in range(n_test)]
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        for seed, (subset, name) in enumerate(songs):
            folder = tmp / subset / name
            folder.mkdir(parents=True)
            stems = synthesize_song(seconds, seed)
            mixture = sum(audio.astype(np.int32) for audio in stems.values())
            if np.abs(mixture).max() >= FULL_SCALE:
                raise AssertionError("the demo mixture clips")  # the gains above keep it below
            # integers written as they are: read back, the mixture is the exact sum of the stems
            for name, audio in {"mixture": mixture.astype(np.int16), **stems}.items():
                sf.write(folder / f"{name}.wav", audio.T, SAMPLE_RATE, subtype="PCM_16")
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
