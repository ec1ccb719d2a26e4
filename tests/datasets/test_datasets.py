"""MUSDB18-HQ access, `bsmamba2 prepare`, the mixing and validation datasets, the sampler."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import bsmamba2.data.datasets as datasets_mod
import bsmamba2.data.sad as sad_mod
from bsmamba2.cli.main import main
from bsmamba2.data import (
    DatasetError,
    MixingDataset,
    SegmentSampler,
    ValidationDataset,
    build_index,
    list_tracks,
    load_index,
    salient_windows,
)
from tests.helpers.musdb import STEMS, VALID, make_musdb


@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory):
    return make_musdb(tmp_path_factory.mktemp("musdb18hq"))


@pytest.fixture(scope="module")
def index_path(musdb_root, tmp_path_factory):
    return build_index(
        musdb_root, tmp_path_factory.mktemp("idx") / "sad.json", window_seconds=1.0, progress=False
    )


def test_list_tracks_uses_the_official_split(musdb_root):
    train = list_tracks(musdb_root, "train")
    valid = list_tracks(musdb_root, "valid")
    assert [t.name for t in train] == ["Train Song 0", "Train Song 1", "Train Song 2"]
    assert sorted(t.name for t in valid) == sorted(VALID)
    assert [t.name for t in list_tracks(musdb_root, "test")] == ["Test Song 0"]
    track = train[0]
    assert track.length == 4 * 44100
    full, _ = sf.read(track.paths["vocals"], dtype="float32")
    np.testing.assert_array_equal(track.read("vocals", 1000, 500), full[1000:1500].T)
    tail = track.read("vocals", track.length - 10, 30)  # zero-padded past the end
    assert tail.shape == (2, 30) and not tail[:, 10:].any()


def test_prepare_index_and_resume(musdb_root, index_path, tmp_path, monkeypatch):
    index = load_index(index_path)
    assert set(index["subsets"]) == {"train", "valid"}
    entry = index["subsets"]["train"]["Train Song 0"]
    # vocals are silent from 1 s to 2 s: the 1 s windows overlapping it are not salient
    assert entry["windows"]["vocals"] == [0, 88200, 110250, 132300]
    assert entry["windows"]["drums"] == list(range(0, 3 * 44100 + 1, 22050))
    # resume: drop one track as if the run had been killed, rerun → only that track is computed
    out = tmp_path / "sad.json"
    partial = json.loads(index_path.read_text())
    del partial["subsets"]["valid"][VALID[0]]
    out.write_text(json.dumps(partial))
    calls = []
    real = sad_mod.salient_windows
    monkeypatch.setattr(
        sad_mod, "salient_windows", lambda audio, window: calls.append(1) or real(audio, window)
    )
    assert main(["prepare", "--musdb", str(musdb_root), "--out", str(out), "--window", "1", "--quiet"]) == 0
    assert len(calls) == len(STEMS)  # one track, four stems
    assert json.loads(out.read_text()) == json.loads(index_path.read_text())


def test_prepare_errors_are_one_line(musdb_root, tmp_path, capsys):
    assert main(["prepare", "--musdb", str(tmp_path / "nowhere"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bsmamba2: error:") and "no 'train' folder" in err and "\n" not in err
    out = tmp_path / "sad.json"
    build_index(musdb_root, out, subsets=["valid"], window_seconds=1.0, progress=False)
    assert main(["prepare", "--musdb", str(musdb_root), "--out", str(out), "--window", "2", "--quiet"]) == 1
    assert "other settings" in capsys.readouterr().err


def test_wav_listing_matches_musdb(musdb_root):
    """MUSDB18-HQ folders are listed without musdb (whose import needs ffmpeg): the same songs,
    order, files and stem ids as musdb.DB gives."""
    import musdb

    for subset, split in (("train", "train"), ("valid", "valid"), ("test", None)):
        db = musdb.DB(root=str(musdb_root), subsets="test" if subset == "test" else "train", split=split,
                      is_wav=True)
        ours = list_tracks(musdb_root, subset)
        assert [t.name for t in ours] == [mt.name for mt in db.tracks]
        for track, mt in zip(ours, db.tracks, strict=True):
            assert track.paths == {"mixture": mt.path, **{s: mt.sources[s].path for s in STEMS}}
            assert track.stem_ids == {"mixture": mt.stem_id, **{s: mt.sources[s].stem_id for s in STEMS}}


def test_prepare_needs_no_ffmpeg_for_wav_folders(musdb_root, index_path, tmp_path, capsys, monkeypatch):
    """Without ffmpeg, MUSDB18-HQ still works (the same index); MUSDB18's .stem.mp4 files need
    it, and say so in one line instead of a traceback."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    out = tmp_path / "x.json"
    assert main(["prepare", "--musdb", str(musdb_root), "--out", str(out), "--window", "1", "--quiet"]) == 0
    assert json.loads(out.read_text()) == json.loads(index_path.read_text())
    stems_out = tmp_path / "y.json"
    assert main(["prepare", "--musdb", str(musdb_root), "--out", str(stems_out), "--stems", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bsmamba2: error:") and "ffprobe" in err
    assert not stems_out.exists()


def test_prepare_reports_musdb_failures_in_one_line(musdb_root, tmp_path, capsys, monkeypatch):
    import musdb

    def broken(**kwargs):
        raise RuntimeError("Traceback (most recent call last):\n  ...\nffprobe: song.stem.mp4: Invalid data")

    monkeypatch.setattr(musdb, "DB", broken)
    args = ["prepare", "--musdb", str(musdb_root), "--out", str(tmp_path / "x.json"), "--stems", "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("ffprobe: song.stem.mp4: Invalid data") and "\n" not in err


@pytest.fixture(scope="module")
def dc_tracks(tmp_path_factory):
    """Tracks whose stems are constants (vocals 1, drums 2, bass 4, other 8) × (track number + 1)."""
    root = tmp_path_factory.mktemp("dc")
    for t in range(3):
        folder = root / "train" / f"Song {t}"
        folder.mkdir(parents=True)
        for k, stem in enumerate(("mixture", *STEMS)):
            value = 15.0 if stem == "mixture" else 2.0 ** (k - 1)
            sf.write(
                folder / f"{stem}.wav",
                np.full((44100, 2), value * (t + 1) / 32, np.float32),
                44100,
                subtype="FLOAT",
            )
    (root / "test").mkdir()
    tracks = list_tracks(root, "train")
    # windows of 0.5 s: starts 0 and 22050 of every stem of every track
    index = {t.name: {"length": t.length, "windows": {s: [0, 22050] for s in STEMS}} for t in tracks}
    return tracks, index


def test_mixing_dataset_statistics(dc_tracks):
    tracks, index = dc_tracks
    ds = MixingDataset(tracks, index, window=22050, segment=441, targets=["vocals", "bass"], seed=3)
    for position in range(300):  # the items are what draw() says
        mixture, targets = ds[position]
        d = ds.draw(position)
        assert mixture.shape == (2, 441) and targets.shape == (2, 2, 441)
        # the mixture is the sum of the four scaled stems, each from its own track
        values = [2.0**k * (d.tracks[k] + 1) / 32 * d.gains[k] * (not d.silent[k]) for k in range(4)]
        torch.testing.assert_close(mixture, torch.full((2, 441), sum(values)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            targets[:, 0, 0], torch.tensor([values[0], values[2]], dtype=torch.float32)
        )
    draws = [ds.draw(p) for p in range(5000)]
    silent = np.array([d.silent for d in draws])
    gains = np.array([d.gains for d in draws])
    picked = np.array([d.tracks for d in draws])
    assert np.abs(silent.mean(axis=0) - 0.1).max() < 0.02  # 4.7 standard deviations; every stem, targets too
    assert gains.min() >= 0.5 and gains.max() <= 1.5
    assert np.abs(gains.mean() - 1.0) < 0.02 and abs(gains.var() - 1 / 12) < 0.01  # U(0.5, 1.5)
    assert np.histogram(gains, bins=5, range=(0.5, 1.5))[0].min() > 0.8 * gains.size / 5
    assert (picked[:, 0] != picked[:, 1]).mean() > 0.5  # stems come from different songs
    # deterministic in (seed, position); other seeds differ
    torch.testing.assert_close(ds[7][0], ds[7][0])
    other = MixingDataset(tracks, index, window=22050, segment=441, seed=4)
    assert [other.draw(p) for p in range(20)] != [ds.draw(p) for p in range(20)]
    assert MixingDataset(tracks, index, 22050, 441, silent_prob=0.0).draw(0).silent == (False,) * 4


def test_validation_dataset_is_aligned_and_fixed(musdb_root, index_path):
    valid = list_tracks(musdb_root, "valid")
    index = load_index(index_path)["subsets"]["valid"]
    ds = ValidationDataset(
        valid, index, segment=44100, targets=["vocals", "drums"], windows_per_track=2, seed=0
    )
    assert len(ds) == 4
    for (track, start), (mixture, targets) in zip(ds.items, ds, strict=True):
        assert start in index[valid[track].name]["windows"]["vocals"]
        stems = sum(valid[track].read(s, start, 44100) for s in STEMS)
        torch.testing.assert_close(mixture, torch.from_numpy(stems), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(targets[1], torch.from_numpy(valid[track].read("drums", start, 44100)))
    assert ValidationDataset(valid, index, 44100, ["vocals"], 2, seed=0).items == ds.items


def test_segment_sampler_resumes_and_shards(monkeypatch):
    sampler = SegmentSampler(segments_per_epoch=12, batch_size=3)
    assert list(sampler) == list(range(12))
    sampler.consumed = 4  # the next epoch (or a resumed one) continues the stream
    assert list(sampler)[:3] == [12, 13, 14]
    # two ranks of batch 3: their first batches together are one process's first batch of 6
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(datasets_mod, "_rank_and_world", lambda rank=rank: (rank, 2))
        s = SegmentSampler(segments_per_epoch=12, batch_size=3)
        assert len(s) == 6
        shards.append(list(s))
    assert sorted(shards[0][:3] + shards[1][:3]) == list(range(6))
    assert sorted(shards[0] + shards[1]) == list(range(12))


def test_bad_targets_and_segments(dc_tracks):
    tracks, index = dc_tracks
    with pytest.raises(DatasetError, match="targets must be distinct stems"):
        MixingDataset(tracks, index, 22050, 441, targets=["voice"])
    with pytest.raises(DatasetError, match="longer than the SAD window"):
        MixingDataset(tracks, index, 22050, 44100)


def test_musdb18_stem_files(tmp_path):
    """MUSDB18 .stem.mp4 (AAC) through musdb/stempeg: windows equal the same span of a full decode."""
    import stempeg

    (tmp_path / "test").mkdir()
    (tmp_path / "train").mkdir()
    stems = (np.random.default_rng(0).standard_normal((5, 2 * 44100, 2)) * 0.1).astype(np.float32)
    writer = stempeg.StreamsWriter(codec="aac", bitrate=256000)
    stempeg.write_stems(str(tmp_path / "train" / "Song A.stem.mp4"), stems, sample_rate=44100, writer=writer)
    (track,) = list_tracks(tmp_path, "train", is_wav=False)
    assert track.length >= 2 * 44100
    full = track.read("vocals")
    np.testing.assert_array_equal(track.read("vocals", 22050, 1000), full[:, 22050:23050])
    index = build_index(tmp_path, subsets=["train"], is_wav=False, window_seconds=1.0, progress=False)
    assert load_index(index)["subsets"]["train"]["Song A"]["windows"]["vocals"] == salient_windows(
        full, 44100
    )
