"""``bsmamba2 evaluate`` end to end on small generated MUSDB18-HQ-layout folders."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bsmamba2.cli.main import main
from bsmamba2.evaluation.bleed import bleedless_fullness
from bsmamba2.evaluation.bsseval import target_groups
from bsmamba2.evaluation.scoring import score_track

museval = pytest.importorskip("museval")
musdb = pytest.importorskip("musdb")

RATE = 44100
SOURCES = ("vocals", "drums", "bass", "other")
TEST_TRACKS = ("Artist A - Song One", "Artist B - Song Two")
# one of musdb's 14 official validation tracks, and one training track
TRAIN_TRACKS = ("Actions - One Minute Smile", "Someone - Training Song")


@pytest.fixture(autouse=True)
def _no_default_weights(monkeypatch):
    monkeypatch.delenv("BSMAMBA2_CHECKPOINT", raising=False)


def _write(path: Path, audio: np.ndarray, subtype: str = "FLOAT") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, RATE, subtype=subtype)


def _make_track(
    folder: Path, rng: np.random.Generator, seconds: float, channels: int = 2, silence: float = 1.05
) -> None:
    n = int(seconds * RATE)
    stems = {s: (rng.standard_normal((channels, n)) * 0.1).astype(np.float32) for s in SOURCES}
    stems["vocals"][:, : int(silence * RATE)] = 0  # a silent vocal passage: window 0 NaN
    # 16-bit, as MUSDB18-HQ ships: musdb decodes WAVs to 16 bits (through ffmpeg), so museval's
    # own pipeline sees exactly the samples soundfile reads only for 16-bit files
    for name, audio in stems.items():
        _write(folder / f"{name}.wav", audio, "PCM_16")
    _write(folder / "mixture.wav", sum(stems.values()), "PCM_16")


@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("musdb18hq")
    rng = np.random.default_rng(0)
    for name, seconds in zip(TEST_TRACKS, (2.0, 2.2), strict=True):
        _make_track(root / "test" / name, rng, seconds)
    for name in TRAIN_TRACKS:
        _make_track(root / "train" / name, rng, 1.5)
    return root


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    """Two 1 s tracks, so that the tiny model runs only twice."""
    root = tmp_path_factory.mktemp("musdb18hq_short")
    rng = np.random.default_rng(3)
    for name in TEST_TRACKS:
        _make_track(root / "test" / name, rng, 1.0, silence=0.3)
    return root


@pytest.fixture(scope="module")
def estimates(musdb_root, tmp_path_factory) -> Path:
    """Noisy vocals/accompaniment estimates in museval's layout {subset}/{track}/{stem}.wav."""
    out = tmp_path_factory.mktemp("estimates")
    rng = np.random.default_rng(1)
    for subset in ("test", "train"):
        for track in sorted((musdb_root / subset).iterdir()):
            stems = {s: sf.read(track / f"{s}.wav", dtype="float32", always_2d=True)[0].T for s in SOURCES}
            accompaniment = stems["drums"] + stems["bass"] + stems["other"]
            for name, ref in (("vocals", stems["vocals"]), ("accompaniment", accompaniment)):
                noisy = ref + rng.standard_normal(ref.shape).astype(np.float32) * np.float32(0.05)
                _write(out / subset / track.name / f"{name}.wav", noisy[:, :-100])  # 100 samples short
    return out


def _frames(path: Path) -> dict[str, dict[str, np.ndarray]]:
    data = json.loads(path.read_text())
    return {
        t["name"]: {m: np.array([float(f["metrics"][m]) for f in t["frames"]]) for m in ("SDR", "SIR")}
        for t in data["targets"]
    }


def _museval_reference_json(musdb_root: Path, estimates: Path, track_name: str, out: Path) -> Path:
    """museval's own pipeline (eval_mus_track) on the same estimates."""
    db = musdb.DB(root=str(musdb_root), is_wav=True, subsets="test")
    track = next(t for t in db.tracks if t.name == track_name)
    user = {
        s: sf.read(estimates / "test" / track_name / f"{s}.wav", always_2d=True)[0]
        for s in ("vocals", "accompaniment")
    }
    museval.eval_mus_track(track, user, output_dir=str(out))
    return out / "test" / f"{track_name}.json"


def test_estimates_match_museval_pipeline(musdb_root, estimates, tmp_path, capsys):
    """Both backends give museval's own per-window numbers; museval reads our files back."""
    fast, slow = tmp_path / "fast", tmp_path / "museval"
    name = TEST_TRACKS[0]
    common = ["evaluate", "--musdb", str(musdb_root), "--is-wav", "--estimates", str(estimates), "-q"]
    assert main([*common, "--tracks", name, "-o", str(fast)]) == 0
    assert main([*common, "--tracks", name, "-o", str(slow), "--backend", "museval"]) == 0
    expected = _frames(_museval_reference_json(musdb_root, estimates, name, tmp_path / "ref"))
    ours_fast, ours_slow = _frames(fast / "test" / f"{name}.json"), _frames(slow / "test" / f"{name}.json")
    for target in ("vocals", "accompaniment"):
        want = expected[target]
        assert np.isnan(want["SDR"][0]) and np.isfinite(want["SDR"][1])
        np.testing.assert_array_equal(ours_slow[target]["SDR"], want["SDR"])
        np.testing.assert_array_equal(ours_slow[target]["SIR"], want["SIR"])
        np.testing.assert_allclose(ours_fast[target]["SDR"], want["SDR"], atol=1.1e-5, rtol=0)
        assert np.isnan(ours_fast[target]["SIR"]).all()
    store = museval.EvalStore()
    store.add_eval_dir(str(fast))
    agg = store.agg_frames_scores()
    summary = json.loads((fast / "summary.json").read_text())
    for target in ("vocals", "accompaniment"):
        assert summary["aggregate"][target]["SDR_median"] == pytest.approx(agg[name, target, "SDR"], abs=1e-5)
    assert "cSDR" in capsys.readouterr().out


def test_model_end_to_end_resume_and_plot(model_root, tmp_path, data_dir, capsys):
    """Separates with the tiny golden checkpoint, scores, writes everything, then resumes."""
    out = tmp_path / "results"
    args = ["evaluate", "--musdb", str(model_root), "--is-wav", "--checkpoint", str(data_dir / "tiny.ckpt")]
    args += ["--segment", "1", "--overlap", "0", "--device", "cpu", "-o", str(out), "--plot", "-q"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in TEST_TRACKS) and "[median]" in table
    jsons = sorted((out / "test").glob("*.json"))
    assert [p.stem for p in jsons] == sorted(TEST_TRACKS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["protocol"] == "custom"
    assert summary["metrics"] == ["SDR", "uSDR", "bleedless", "fullness"]
    for track in summary["tracks"]:
        frames = _frames(out / "test" / f"{track['track']}.json")
        for target in ("vocals", "accompaniment"):
            assert math.isfinite(track["scores"][target]["uSDR"])
            median = np.median(frames[target]["SDR"])
            assert track["scores"][target]["SDR"] == pytest.approx(median, abs=1e-5)
    vocals = [t["scores"]["vocals"]["SDR"] for t in summary["tracks"]]
    assert summary["aggregate"]["vocals"]["SDR_median"] == pytest.approx(np.median(vocals))
    assert summary["aggregate"]["vocals"]["SDR_mean"] == pytest.approx(np.mean(vocals))
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0] == "track,subset,target,SDR,uSDR,bleedless,fullness" and len(rows) == 5
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"

    mtimes = [p.stat().st_mtime_ns for p in jsons]
    assert main(args) == 0  # resumed: nothing separated again
    assert "2 track(s) already scored" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in jsons] == mtimes
    assert json.loads((out / "summary.json").read_text())["aggregate"] == summary["aggregate"]
    other = [arg if arg != "1" else "0.5" for arg in args]  # another segment length
    assert main([*other, "--tracks", TEST_TRACKS[0]]) == 1  # other settings: refused
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--tta", "--tracks", TEST_TRACKS[0]]) == 1  # TTA is another setting too
    assert "other settings" in capsys.readouterr().err
    tta = [arg if arg != str(out) else str(tmp_path / "tta") for arg in args]
    assert main([*tta, "--tta", "--shifts", "2", "--tracks", TEST_TRACKS[0]]) == 0
    settings = json.loads((tmp_path / "tta" / "summary.json").read_text())["settings"]
    assert (settings["tta"], settings["shifts"]) == (True, 2)


def test_valid_split_is_musdb_validation_list(musdb_root, estimates, tmp_path):
    out = tmp_path / "valid"
    common = ["evaluate", "--musdb", str(musdb_root), "--is-wav", "--estimates", str(estimates), "-q"]
    assert main([*common, "--split", "valid", "-o", str(out)]) == 0
    assert [p.stem for p in (out / "train").glob("*.json")] == [TRAIN_TRACKS[0]]
    rest = tmp_path / "train_split"
    assert main([*common, "--split", "train", "-o", str(rest)]) == 0
    assert [p.stem for p in (rest / "train").glob("*.json")] == [TRAIN_TRACKS[1]]
    assert main([*common, "--split", "valid", "--subset", "test", "-o", str(out)]) == 1


def test_folder_mode_silent_estimate_and_mono(musdb_root, estimates, tmp_path, capsys):
    """--references on plain folders: accompaniment from drums+bass+other, a silent estimate
    reported (museval would raise) with NaN cSDR but a uSDR, mono stems scored."""
    refs = tmp_path / "refs"
    est = tmp_path / "est"
    shutil.copytree(musdb_root / "test", refs)
    shutil.copytree(estimates / "test", est)
    silent = est / TEST_TRACKS[1] / "vocals.wav"
    _write(silent, np.zeros((2, RATE), np.float32))
    rng = np.random.default_rng(2)
    _make_track(refs / "Mono Track", rng, 2.2, channels=1)
    mono_vocals = sf.read(refs / "Mono Track" / "vocals.wav", dtype="float32", always_2d=True)[0].T
    _write(
        est / "Mono Track" / "vocals.wav",
        mono_vocals + np.float32(0.1) * rng.standard_normal(mono_vocals.shape).astype(np.float32),
    )
    out = tmp_path / "out"
    for backend in ("fast", "museval"):
        code = main(
            [
                "evaluate",
                "--references",
                str(refs),
                "--estimates",
                str(est),
                "-o",
                str(out / backend),
                "--backend",
                backend,
                "-q",
            ]
        )
        assert code == 0
        captured = capsys.readouterr()
        assert "silent over the whole track" in captured.err
        summary = json.loads((out / backend / "summary.json").read_text())
        scores = {t["track"]: t["scores"] for t in summary["tracks"]}
        assert scores[TEST_TRACKS[1]]["vocals"]["SDR"] is None  # NaN, written as null
        assert scores[TEST_TRACKS[1]]["vocals"]["uSDR"] == pytest.approx(0.0, abs=1e-6)
        assert scores[TEST_TRACKS[0]]["accompaniment"]["SDR"] is not None
        assert set(scores["Mono Track"]) == {"vocals"} and scores["Mono Track"]["vocals"]["SDR"] is not None
    fast = json.loads((out / "fast" / "summary.json").read_text())["tracks"]
    slow = json.loads((out / "museval" / "summary.json").read_text())["tracks"]
    for a, b in zip(fast, slow, strict=True):
        for target in a["scores"]:
            if a["scores"][target]["SDR"] is not None:
                assert a["scores"][target]["SDR"] == pytest.approx(b["scores"][target]["SDR"], abs=1e-5)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda r, e: ["--references", str(r / "test")], "--checkpoint"),
        (
            lambda r, e: [
                "--musdb",
                str(r),
                "--is-wav",
                "--estimates",
                str(e),
                "--model",
                "bs_mamba2_vocals",
            ],
            "either",
        ),
        (lambda r, e: ["--musdb", str(e), "--is-wav", "--estimates", str(e)], "incomplete MUSDB18 track"),
        (lambda r, e: ["--musdb", str(r), "--estimates", str(e)], "need --is-wav"),
        (
            lambda r, e: ["--musdb", str(r), "--is-wav", "--estimates", str(e), "--tracks", "Nope"],
            "no track named",
        ),
        (lambda r, e: ["--musdb", str(r / "test"), "--estimates", str(e)], "not a MUSDB18 folder"),
    ],
)
def test_user_errors_are_one_line(musdb_root, estimates, tmp_path, capsys, make_args, message):
    assert main(["evaluate", *make_args(musdb_root, estimates), "-o", str(tmp_path), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bsmamba2: error:") and message in err and "\n" not in err


def test_bad_estimates_are_one_line_errors(musdb_root, estimates, tmp_path, capsys):
    est = tmp_path / "est"
    shutil.copytree(estimates / "test" / TEST_TRACKS[0], est / TEST_TRACKS[0])
    refs = musdb_root / "test"
    args = ["evaluate", "--references", str(refs), "--estimates", str(est), "-q", "--tracks", TEST_TRACKS[0]]
    (est / TEST_TRACKS[0] / "vocals.wav").write_bytes(b"not audio")
    assert main([*args, "-o", str(tmp_path / "a")]) == 1
    assert "vocals.wav" in capsys.readouterr().err
    _write(est / TEST_TRACKS[0] / "vocals.wav", np.ones((1, RATE), np.float32))
    assert main([*args, "-o", str(tmp_path / "b")]) == 1
    assert "channel" in capsys.readouterr().err


def test_musdb18hq_needs_no_ffmpeg_and_missing_ffmpeg_is_a_clear_error(
    musdb_root, estimates, tmp_path, capsys, monkeypatch
):
    """WAV folders are read and scored without ffmpeg (the same per-track JSON, which
    museval reads back); museval itself and .stem.mp4 files need it: one line saying so."""
    args = ["evaluate", "--musdb", str(musdb_root), "--is-wav", "--estimates", str(estimates), "-q"]
    assert main([*args, "-o", str(tmp_path / "with")]) == 0
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main([*args, "-o", str(tmp_path / "without")]) == 0
    for name in TEST_TRACKS:
        with_ffmpeg = (tmp_path / "with" / "test" / f"{name}.json").read_text()
        assert (tmp_path / "without" / "test" / f"{name}.json").read_text() == with_ffmpeg
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "slow"), "--backend", "museval"]) == 1
    assert "ffmpeg" in capsys.readouterr().err
    assert main(["evaluate", "--musdb", str(musdb_root), "--estimates", str(estimates), "-o", str(tmp_path)]) == 1
    assert "ffmpeg" in capsys.readouterr().err


def test_target_groups_follow_museval():
    five = ["vocals", "drums", "bass", "other", "accompaniment"]
    assert target_groups(five) == [
        (["vocals", "drums", "bass", "other"], ["drums", "bass", "other"]),
        (["vocals", "accompaniment"], ["vocals", "accompaniment"]),
    ]
    assert target_groups(["vocals", "accompaniment"]) == [
        (["vocals", "accompaniment"], ["vocals", "accompaniment"])
    ]
    assert target_groups(["drums", "accompaniment"]) == [
        (["drums", "accompaniment"], ["drums", "accompaniment"])
    ]
    assert target_groups(["vocals"]) == [(["vocals"], ["vocals"])]


def test_silent_vocals_window_is_nan_for_the_other_stems_too():
    """museval scores drums/bass/other together with vocals: vocal silence blanks their windows."""
    rate = 1000
    rng = np.random.default_rng(6)
    refs = {s: rng.standard_normal((2, 3 * rate)) for s in SOURCES}
    refs["vocals"][:, rate : 2 * rate] = 0
    refs["accompaniment"] = refs["drums"] + refs["bass"] + refs["other"]
    ests = {s: a + 0.1 * rng.standard_normal(a.shape) for s, a in refs.items()}
    result = score_track("t", "test", refs, ests, rate)
    assert list(result.targets) == list(ests)
    for target, scores in result.targets.items():
        assert np.isnan(scores.frames["SDR"]).tolist() == [False, True, False], target
        assert math.isfinite(scores.csdr) and math.isfinite(scores.usdr)


def test_references_folder_separated_with_a_model(musdb_root, tmp_path, monkeypatch):
    """--references with a model: each folder's mixture.wav is separated, then scored."""
    import bsmamba2.cli.evaluate as cli

    def fake_separator(args, weights):
        return lambda mixture, rate: {"vocals": 0.3 * mixture, "accompaniment": 0.7 * mixture}

    monkeypatch.setattr(cli, "_separator", fake_separator)
    out = tmp_path / "out"
    args = ["evaluate", "--references", str(musdb_root / "test"), "--checkpoint", "unused.ckpt"]
    assert main([*args, "-o", str(out), "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for track in summary["tracks"]:
        folder = musdb_root / "test" / track["track"]
        audio = {s: sf.read(folder / f"{s}.wav", always_2d=True)[0] for s in (*SOURCES, "mixture")}
        accompaniment = audio["drums"] + audio["bass"] + audio["other"]
        for target, ref, gain in (("vocals", audio["vocals"], 0.3), ("accompaniment", accompaniment, 0.7)):
            est = gain * audio["mixture"].astype(np.float32)
            want = 10 * math.log10((np.sum(ref**2) + 1e-7) / (np.sum((ref - est) ** 2) + 1e-7))
            assert track["scores"][target]["uSDR"] == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("stem", ["vocals", "mixture"])
def test_unreadable_musdb_file_is_a_one_line_error(musdb_root, estimates, tmp_path, capsys, stem):
    root = tmp_path / "musdb"
    shutil.copytree(musdb_root / "test" / TEST_TRACKS[1], root / "test" / TEST_TRACKS[1])
    (root / "test" / TEST_TRACKS[1] / f"{stem}.wav").write_bytes(b"RIFF garbage")
    args = ["evaluate", "--musdb", str(root), "--is-wav", "--estimates", str(estimates), "-q"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bsmamba2: error: cannot read") and "\n" not in err


def test_missing_estimates_fail_unless_allowed_and_padding_is_reported(musdb_root, estimates, tmp_path, capsys):
    """One of two tracks separated: the medians cover one track, so the summary says 1 of 2
    and the exit code is 1 unless --allow-missing; the 100-sample-short estimates are noted."""
    est = tmp_path / "est"
    shutil.copytree(estimates / "test" / TEST_TRACKS[0], est / "test" / TEST_TRACKS[0])
    args = ["evaluate", "--musdb", str(musdb_root), "--is-wav", "--estimates", str(est), "-q"]
    assert main([*args, "-o", str(tmp_path / "strict")]) == 1
    captured = capsys.readouterr()
    assert f"{TEST_TRACKS[1]}: no estimates in {est}, skipped" in captured.err
    assert "estimate 'vocals' is 0.002 s shorter than its reference: zero-padded" in captured.err
    assert captured.err.strip().splitlines()[-1] == (
        f"bsmamba2: error: 1 of 2 tracks have no estimates in {est}, so the medians cover 1; "
        "--allow-missing accepts that"
    )
    assert f"1 of 2 tracks scored; no estimates for {TEST_TRACKS[1]}" in captured.out
    summary = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert (summary["scored"], summary["expected"], summary["missing"]) == (1, 2, [TEST_TRACKS[1]])
    assert any("zero-padded" in note for note in summary["tracks"][0]["notes"])
    assert main([*args, "-o", str(tmp_path / "lenient"), "--allow-missing"]) == 0
    assert "1 of 2 tracks scored" in capsys.readouterr().out


def test_bleedless_and_fullness_in_json_csv_and_table(musdb_root, estimates, tmp_path, capsys):
    """Each track's scores are bleedless_fullness of its (zero-padded) estimate; resumed runs
    read them back."""
    name = TEST_TRACKS[0]
    out = tmp_path / "out"
    args = ["evaluate", "--musdb", str(musdb_root), "--is-wav", "--estimates", str(estimates), "-q"]
    assert main([*args, "--tracks", name, "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert "vocals bleedless" in table and "accompaniment fullness" in table
    folder = musdb_root / "test" / name
    stems = {s: sf.read(folder / f"{s}.wav", always_2d=True)[0].T for s in SOURCES}
    references = {"vocals": stems["vocals"], "accompaniment": stems["drums"] + stems["bass"] + stems["other"]}
    summary = json.loads((out / "summary.json").read_text())
    track_json = json.loads((out / "test" / f"{name}.json").read_text())["bsmamba2"]
    rows = {row.split(",")[2]: row.split(",") for row in (out / "summary.csv").read_text().splitlines()[1:]}
    for target, reference in references.items():
        estimate = sf.read(estimates / "test" / name / f"{target}.wav", dtype="float32", always_2d=True)[0].T
        padded = np.pad(estimate, ((0, 0), (0, reference.shape[1] - estimate.shape[1])))
        bleedless, fullness = bleedless_fullness(reference, padded, RATE)
        assert 0 < bleedless < 100 and 0 < fullness < 100
        scores = summary["tracks"][0]["scores"][target]
        assert (scores["bleedless"], scores["fullness"]) == pytest.approx((bleedless, fullness), rel=1e-12)
        assert track_json["bleedless"][target] == scores["bleedless"]
        assert summary["aggregate"][target]["fullness_median"] == pytest.approx(fullness, rel=1e-12)
        assert float(rows[target][5]) == pytest.approx(bleedless, abs=1e-5)
    assert main([*args, "--tracks", name, "-o", str(out)]) == 0  # resumed: the same numbers
    assert json.loads((out / "summary.json").read_text())["aggregate"] == summary["aggregate"]
