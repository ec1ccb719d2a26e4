"""The generated demo set: MUSDB18-HQ's layout and split, exact mixtures, sound where music has
it, atomic creation, and the README's commands running on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from bsmamba2.cli.main import main
from bsmamba2.data import STEMS, DatasetError, list_tracks
from bsmamba2.data.demo import make_demo, synthesize_song


def test_layout_split_and_exact_mixtures(tmp_path):
    root = make_demo(tmp_path / "demo", n_train=1, n_test=1, seconds=9.0)
    tracks = {subset: list_tracks(root, subset) for subset in ("train", "valid", "test")}
    assert [len(t) for t in tracks.values()] == [1, 2, 1]  # musdb's split finds the validation songs
    for track in (t for subset in tracks.values() for t in subset):
        info = sf.info(track.paths["mixture"])
        assert (info.samplerate, info.channels, info.subtype, track.length) == (44100, 2, "PCM_16", 9 * 44100)
        stems = {s: track.read(s) for s in STEMS}
        np.testing.assert_array_equal(track.read("mixture"), sum(stems.values()))  # exactly their sum
        assert np.abs(track.read("mixture")).max() < 1
        for stem, audio in stems.items():
            assert np.sqrt(np.mean(audio**2)) > 0.01, stem  # every stem sounds
    vocals = tracks["train"][0].read("vocals")
    rms = np.sqrt(np.mean(vocals[:, : 8 * 44100].reshape(2, -1, 2205) ** 2, axis=(0, 2)))  # per 50 ms
    assert (rms == 0).mean() > 0.2 and (rms > 0.01).mean() > 0.4  # phrases and rests


def test_songs_differ_and_repeat_from_their_seed():
    first, again, second = synthesize_song(2.0, 0), synthesize_song(2.0, 0), synthesize_song(2.0, 1)
    assert all(np.array_equal(first[s], again[s]) for s in STEMS)
    assert not np.array_equal(first["vocals"], second["vocals"])


def test_the_folder_appears_only_complete(tmp_path, monkeypatch):
    (tmp_path / "taken").mkdir()
    with pytest.raises(DatasetError, match="taken already exists; choose a new folder"):
        make_demo(tmp_path / "taken")
    written = []

    def fail_later(path, *args, **kwargs):
        written.append(path)
        if len(written) == 7:
            raise OSError("No space left on device")

    monkeypatch.setattr(sf, "write", fail_later)
    with pytest.raises(OSError, match="No space left"):
        make_demo(tmp_path / "demo", n_train=1, n_test=1, seconds=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial set, no temporary


def test_prepare_demo_then_evaluate_as_the_readme_says(tmp_path, data_dir, capsys):
    root = tmp_path / "demo"
    assert main(["prepare", "--demo", str(root), "--quiet"]) == 0
    index = json.loads((root / "bsmamba2_sad.json").read_text())
    assert sorted(index["subsets"]) == ["train", "valid"]
    for songs in index["subsets"].values():
        assert all(all(song["windows"][s] for s in STEMS) for song in songs.values())  # salient windows
    assert main(["prepare", "--demo", str(root)]) == 1
    assert "already exists" in capsys.readouterr().err
    args = ["evaluate", "--musdb", str(root), "--is-wav", "--checkpoint", str(data_dir / "tiny.ckpt")]
    assert main([*args, "--tracks", "Demo Test Song 1", "--device", "cpu", "-o", str(tmp_path / "r"), "-q"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert [t["track"] for t in summary["tracks"]] == ["Demo Test Song 1"]
