"""``bsmamba2 separate``: inputs, naming, formats, safety, errors and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, save_model
from bsmamba2.audio import read_audio
from bsmamba2.cli.main import main
from tests.helpers.configs import MICRO

FAST = ["--segment", "0.5", "--quiet"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "micro.safetensors"
    save_model(BSMamba2(MICRO), path)
    return path


def _wav(path, channels=2, seconds=0.6, rate=44100, subtype="FLOAT"):
    x = (np.random.randn(channels, int(seconds * rate)) * 0.2).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.T, rate, subtype=subtype)
    return x


def test_default_layout_and_null_test(tmp_path, ckpt, capsys):
    x = _wav(tmp_path / "in" / "song.wav")
    code = main(
        [
            "separate",
            str(tmp_path / "in" / "song.wav"),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(ckpt),
            "--segment",
            "0.5",
        ]
    )
    assert code == 0
    vocals, rate = read_audio(tmp_path / "out" / "song" / "vocals.wav")
    accompaniment, _ = read_audio(tmp_path / "out" / "song" / "accompaniment.wav")
    assert rate == 44100 and vocals.shape == x.shape
    assert sf.info(str(tmp_path / "out" / "song" / "vocals.wav")).subtype == "FLOAT"
    np.testing.assert_array_equal(accompaniment, x - vocals)
    assert np.abs(vocals + accompaniment - x).max() <= 2 * np.finfo(np.float32).eps
    out = capsys.readouterr().out
    assert (
        "song.wav: 0.6 s of audio in" in out
        and "× real time" in out
        and "1 separated, 0 skipped, 0 failed" in out
    )


def test_templates_stems_flac_and_rates(tmp_path, ckpt):
    _wav(tmp_path / "a.wav", channels=1, rate=48000)
    args = [
        "separate",
        str(tmp_path / "a.wav"),
        "-o",
        str(tmp_path / "out"),
        "--checkpoint",
        str(ckpt),
        *FAST,
    ]
    assert (
        main(
            [
                *args,
                "--filename",
                "{model}/{track}-{stem}.{ext}",
                "--stems",
                "vocals",
                "--format",
                "flac",
                "--bit-depth",
                "16",
            ]
        )
        == 0
    )
    target = tmp_path / "out" / "micro" / "a-vocals.flac"
    info = sf.info(str(target))
    assert (info.samplerate, info.channels, info.subtype) == (
        48000,
        1,
        "PCM_16",
    )  # mono in, mono out, input rate
    assert sorted(p.name for p in target.parent.iterdir()) == ["a-vocals.flac"]
    assert main([*args, "--filename", "{track}_{stem}.{ext}", "--sample-rate", "22050"]) == 0
    assert sf.info(str(tmp_path / "out" / "a_accompaniment.wav")).samplerate == 22050


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--filename", "{track}.{ext}"], "same file"),
        (["--filename", "{song}/{stem}.{ext}"], "bad --filename template"),
        (["--stems", "drums"], "unknown stem 'drums'"),
        (["--format", "flac", "--bit-depth", "float"], "FLAC stores integers"),
        (["--batch-size", "0"], "batch size must be auto or at least 1, got 0"),
        (["--mp3", "--int24"], "mp3 has no bit depth"),
        (["--flac", "--bitrate", "192"], "--bitrate applies to mp3 and opus, not flac"),
        (["--format", "opus", "--sample-rate", "44100"], "opus cannot store 44100 Hz"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, ckpt, capsys, extra, message):
    _wav(tmp_path / "a.wav")
    code = main(
        [
            "separate",
            str(tmp_path / "a.wav"),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(ckpt),
            *FAST,
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1


def test_lossy_formats_and_demucs_aliases(tmp_path, ckpt):
    x = _wav(tmp_path / "a.wav", seconds=1.0)
    base = ["separate", str(tmp_path / "a.wav"), "--checkpoint", str(ckpt), *FAST]
    assert main([*base, "-o", str(tmp_path / "mp3"), "--mp3", "--mp3-bitrate", "128k"]) == 0
    vocals = tmp_path / "mp3" / "a" / "vocals.mp3"
    info = sf.info(str(vocals))
    assert (info.format, info.samplerate, info.channels) == ("MP3", 44100, 2)
    assert read_audio(vocals)[0].shape == x.shape
    assert abs(vocals.stat().st_size * 8 / 1000 - 128) < 20  # 1 s at 128 kbps
    assert main([*base, "-o", str(tmp_path / "opus"), "--format", "opus"]) == 0
    info = sf.info(str(tmp_path / "opus" / "a" / "accompaniment.opus"))
    assert (info.format, info.subtype, info.samplerate) == ("OGG", "OPUS", 48000)  # Opus has no 44.1 kHz
    assert main([*base, "-o", str(tmp_path / "flac"), "--flac", "--int24"]) == 0
    info = sf.info(str(tmp_path / "flac" / "a" / "vocals.flac"))
    assert (info.format, info.subtype) == ("FLAC", "PCM_24")
    assert main([*base, "-o", str(tmp_path / "wav"), "--float32"]) == 0
    assert sf.info(str(tmp_path / "wav" / "a" / "vocals.wav")).subtype == "FLOAT"


def test_a_preview_writes_only_the_part_asked_for(tmp_path, ckpt, capsys):
    x = _wav(tmp_path / "a.wav", seconds=1.0)
    base = ["separate", str(tmp_path / "a.wav"), "--checkpoint", str(ckpt), *FAST, "-o", str(tmp_path / "out")]
    assert main([*base, "--start", "0:00.25", "--duration", "0.5"]) == 0
    vocals = read_audio(tmp_path / "out" / "a" / "vocals.wav")[0]
    accompaniment = read_audio(tmp_path / "out" / "a" / "accompaniment.wav")[0]
    assert vocals.shape == (2, 22050)
    np.testing.assert_array_equal(accompaniment, x[:, 11025:33075] - vocals)
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--start", "soon"])
    assert exit_info.value.code == 2 and "expected seconds such as 90, 1:30" in capsys.readouterr().err


def test_tta_and_shifts_keep_the_null_test(tmp_path, ckpt, capsys):
    x = _wav(tmp_path / "a.wav", seconds=0.8)
    base = ["separate", str(tmp_path / "a.wav"), "--checkpoint", str(ckpt), *FAST, "-o", str(tmp_path / "out")]
    assert main([*base, "--tta", "--shifts", "2"]) == 0
    vocals = read_audio(tmp_path / "out" / "a" / "vocals.wav")[0]
    np.testing.assert_array_equal(read_audio(tmp_path / "out" / "a" / "accompaniment.wav")[0], x - vocals)
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--shifts", "0"])
    assert exit_info.value.code == 2 and "expected a whole number of at least 1, got '0'" in capsys.readouterr().err


def test_list_models_says_size_hash_data_licence_and_cache(tmp_path, capsys, monkeypatch):
    from bsmamba2.checkpoint.registry import KNOWN

    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path))
    assert main(["separate", "--list-models"]) == 0
    out = capsys.readouterr().out
    entry = KNOWN["bs_mamba2_vocals"]
    assert f"{entry.size:,} bytes, SHA-256 {entry.sha256}, not downloaded yet" in out
    assert "trained on MUSDB18; licence: research use" in out
    (tmp_path / entry.filename).write_bytes(b"x" * entry.size)  # the size of a complete download
    assert main(["separate", "--list-models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == list(KNOWN) and rows[0]["cached"] is True
    assert rows[0]["path"] == str(tmp_path / entry.filename) and rows[0]["sha256"] == entry.sha256
    assert main(["separate"]) == 1
    assert "no INPUT: name audio files or folders" in capsys.readouterr().err


def test_dir_and_trackext_fields_keep_same_named_tracks_apart(tmp_path, ckpt, capsys):
    for name in ("a/song.wav", "b/song.wav", "song.flac"):
        _wav(tmp_path / "in" / name, subtype="PCM_16")
    base = ["separate", str(tmp_path / "in"), "--checkpoint", str(ckpt), *FAST]
    assert main([*base, "-o", str(tmp_path / "clash")]) == 1  # all three are song/vocals.wav
    err = capsys.readouterr().err
    assert "is also the output of" in err and "{dir} (the input's folder) or {trackext}" in err
    assert main([*base, "-o", str(tmp_path / "out"), "--filename", "{dir}/{track}/{stem}.{ext}"]) == 0
    found = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("vocals.wav"))
    assert found == ["a/song/vocals.wav", "b/song/vocals.wav", "song/vocals.wav"]
    direct = ["separate", str(tmp_path / "in" / "a" / "song.wav"), str(tmp_path / "in" / "song.flac")]
    direct += ["--checkpoint", str(ckpt), *FAST, "-o", str(tmp_path / "ext"), "--filename", "{track}.{trackext}/{stem}.{ext}"]
    assert main(direct) == 0
    assert sorted(p.name for p in (tmp_path / "ext").iterdir()) == ["song.flac", "song.wav"]


def test_demucs_names_for_model_device_output_and_two_stems(tmp_path, ckpt, monkeypatch):
    from bsmamba2.checkpoint import registry

    _wav(tmp_path / "a.wav")
    monkeypatch.setitem(registry.KNOWN, "micro", registry.KnownCheckpoint("micro", "http://127.0.0.1:9/m", 1, "0", "x"))
    monkeypatch.setattr(registry, "fetch", lambda name, progress=True: ckpt)
    args = ["separate", str(tmp_path / "a.wav"), "-n", "micro", "-d", "cpu", "--out", str(tmp_path / "o")]
    assert main([*args, *FAST, "--two-stems", "vocals"]) == 0
    assert sorted(p.name for p in (tmp_path / "o" / "a").iterdir()) == ["accompaniment.wav", "vocals.wav"]
    with pytest.raises(SystemExit):
        main([*args, *FAST, "--two-stems", "vocals", "--stems", "vocals"])  # one or the other


def test_overwrite_protection(tmp_path, ckpt, capsys):
    _wav(tmp_path / "a.wav")
    args = [
        "separate",
        str(tmp_path / "a.wav"),
        "-o",
        str(tmp_path / "out"),
        "--checkpoint",
        str(ckpt),
        "--segment",
        "0.5",
    ]
    target = tmp_path / "out" / "a" / "vocals.wav"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious")
    assert main(args) == 0
    assert target.read_bytes() == b"precious" and not (tmp_path / "out" / "a" / "accompaniment.wav").exists()
    assert "skipped" in capsys.readouterr().out
    assert main([*args, "--overwrite"]) == 0
    assert read_audio(target)[0].shape == (2, int(0.6 * 44100))
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "accompaniment.wav",
        "vocals.wav",
    ]  # no temp files left


def test_bad_file_among_good_ones(tmp_path, ckpt, capsys):
    _wav(tmp_path / "in" / "one.wav")
    _wav(tmp_path / "in" / "sub" / "two.flac", subtype="PCM_24")
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF not really a wav file" * 10)
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    code = main(
        [
            "separate",
            str(tmp_path / "in"),
            str(tmp_path / "missing.wav"),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            str(ckpt),
            *FAST,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one", "two"]
    assert all((tmp_path / "out" / t / "vocals.wav").exists() for t in ("one", "two"))
    assert any("broken.wav: not a readable audio file" in line for line in err)
    assert any("missing.wav: no such file or directory" in line for line in err)
    assert err[-1] == "2 separated, 0 skipped, 2 failed"
    assert not list((tmp_path / "out").rglob("*.part"))


def test_glob_and_outputs_inside_the_input_folder(tmp_path, ckpt):
    _wav(tmp_path / "in" / "a.wav")
    _wav(tmp_path / "in" / "b.flac", subtype="PCM_16")
    args = [
        "separate",
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "in" / "sep"),
        "--checkpoint",
        str(ckpt),
        *FAST,
    ]
    assert main([*args, "--glob", "*.flac"]) == 0
    assert [p.name for p in (tmp_path / "in" / "sep").iterdir()] == ["b"]
    assert main(args) == 0  # the outputs under the input folder are not inputs themselves
    assert sorted(p.name for p in (tmp_path / "in" / "sep").iterdir()) == ["a", "b"]


def test_weights_from_environment_or_a_clear_message(tmp_path, ckpt, capsys, monkeypatch):
    _wav(tmp_path / "a.wav")
    args = ["separate", str(tmp_path / "a.wav"), "-o", str(tmp_path / "out"), *FAST]
    monkeypatch.delenv("BSMAMBA2_CHECKPOINT", raising=False)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "no model weights" in err and "--checkpoint" in err and "--model" in err and err.count("\n") == 1
    monkeypatch.setenv("BSMAMBA2_CHECKPOINT", str(ckpt))
    assert main(args) == 0 and (tmp_path / "out" / "a" / "vocals.wav").exists()
    monkeypatch.setenv("BSMAMBA2_CHECKPOINT", str(tmp_path / "nope.ckpt"))
    assert main([*args, "--overwrite"]) == 1
    assert "nope.ckpt: no such checkpoint file" in capsys.readouterr().err


def test_outputs_never_replace_the_input(tmp_path, ckpt, capsys):
    x = _wav(tmp_path / "vocals.wav")
    code = main(
        [
            "separate",
            str(tmp_path / "vocals.wav"),
            "-o",
            str(tmp_path),
            "--filename",
            "{stem}.{ext}",
            "--checkpoint",
            str(ckpt),
            *FAST,
            "--overwrite",
        ]
    )
    assert code == 1 and "would overwrite the input" in capsys.readouterr().err
    np.testing.assert_array_equal(read_audio(tmp_path / "vocals.wav")[0], x)


def test_batch_size_auto_or_a_number(tmp_path, ckpt, capsys):
    _wav(tmp_path / "a.wav", seconds=1.3)
    base = ["separate", str(tmp_path / "a.wav"), "--checkpoint", str(ckpt), *FAST]
    assert main([*base, "-o", str(tmp_path / "auto"), "--batch-size", "auto"]) == 0
    assert main([*base, "-o", str(tmp_path / "three"), "--batch-size", "3"]) == 0
    auto, _ = read_audio(tmp_path / "auto" / "a" / "vocals.wav")
    three, _ = read_audio(tmp_path / "three" / "a" / "vocals.wav")
    np.testing.assert_allclose(three, auto, atol=1e-5)
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--batch-size", "many"])
    assert exit_info.value.code == 2 and "expected auto or a whole number, got 'many'" in capsys.readouterr().err


def test_non_finite_model_output_fails_the_file(tmp_path, capsys):
    """Finite weights whose output overflows: an error for that file, no NaN file written."""
    torch.manual_seed(3)
    model = BSMamba2(MICRO)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if "to_freqs" in name and name.endswith("0.2.bias"):
                tensor.fill_(3e38)
    save_model(model, tmp_path / "overflow.safetensors")
    _wav(tmp_path / "in" / "song.wav")
    args = ["separate", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    code = main([*args, "--checkpoint", str(tmp_path / "overflow.safetensors"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert any("song.wav: the model's output has NaN or infinite values" in line for line in err), err
    assert err[-1] == "0 separated, 0 skipped, 1 failed"
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def _damaged_mp3(path) -> None:
    """An MP3 with 200 junk bytes in the middle: libmpg123 resyncs and decodes it all, and
    prints "Note: Illegal Audio-MPEG-Header ..." to file descriptor 2."""
    sf.write(path, (np.random.randn(44100, 2) * 0.1).astype(np.float32), 44100)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2] = b"junk" * 50
    path.write_bytes(data)


def test_decoder_notes_only_with_verbose(tmp_path, ckpt, capfd):
    _damaged_mp3(tmp_path / "song.mp3")
    args = ["separate", str(tmp_path / "song.mp3"), "--checkpoint", str(ckpt), *FAST]
    assert main([*args, "-o", str(tmp_path / "verbose"), "--verbose"]) == 0
    assert "Illegal Audio-MPEG-Header" in capfd.readouterr().err
    assert main([*args, "-o", str(tmp_path / "quiet")]) == 0  # and --verbose is not left on
    assert capfd.readouterr().err == ""


def test_truncated_wav_is_separated_with_a_warning(tmp_path, ckpt, capsys):
    x = np.random.randn(2, 2 * 44100).astype(np.float32) * 0.1
    sf.write(tmp_path / "cut.wav", x.T, 44100, subtype="PCM_16")
    size = (tmp_path / "cut.wav").stat().st_size
    with (tmp_path / "cut.wav").open("r+b") as f:
        f.truncate(size // 2)
    code = main(["separate", str(tmp_path / "cut.wav"), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    assert err == [f"bsmamba2: warning: {tmp_path / 'cut.wav'}: truncated: the header declares 2.0 s, the file holds 1.0 s; using what is there"]
    assert sf.info(str(tmp_path / "out" / "cut" / "vocals.wav")).frames == sf.info(str(tmp_path / "cut.wav")).frames
