"""load_model / save_model: every layout, and refusals with one-line messages."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import bsmamba2
from bsmamba2.checkpoint import CheckpointError, infer_config, load_model, read_weights, save_model
from bsmamba2.model import BSMamba2, BSMamba2Config

SMALL = BSMamba2Config(dim=16, depth=2, expand=2, headdim=8, d_state=12, n_stems=2)


def small_spec() -> torch.Tensor:
    return torch.randn(1, 2, 1025, 6, dtype=torch.complex64)


def assert_one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for frag in fragments:
        assert frag in msg, msg


@pytest.fixture(scope="module")
def small_model() -> BSMamba2:
    torch.manual_seed(7)
    return BSMamba2(SMALL).eval()


def outputs(model: BSMamba2, spec: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(spec)


def test_official_ckpt_raw_and_ema_differ(data_dir):
    raw = load_model(data_dir / "tiny.ckpt")
    ema = load_model(data_dir / "tiny.ckpt", ema=True)
    plain = load_model(data_dir / "tiny_plain.pt")
    assert (raw.config.dim, raw.config.depth, raw.config.n_stems, raw.config.stereo) == (32, 2, 1, True)
    assert not raw.training
    for (k, a), b in zip(raw.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, b) for a, b in zip(raw.parameters(), ema.parameters(), strict=True))


@pytest.mark.parametrize("layout", ["plain", "prefixed", "wrapped", "safetensors", "ours"])
def test_layouts_round_trip(tmp_path, small_model, layout):
    sd = small_model.state_dict()
    path = tmp_path / f"m.{layout}"
    if layout == "plain":
        torch.save(sd, path)
    elif layout == "prefixed":
        torch.save({f"model.{k}": v for k, v in sd.items()}, path)
    elif layout == "wrapped":
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        save_model(small_model, path)
    loaded = load_model(path)
    assert loaded.config == SMALL  # inferred from shapes (or stored in our format)
    spec = small_spec()
    assert torch.equal(outputs(loaded, spec), outputs(small_model, spec))


def test_our_format_keeps_config_that_shapes_cannot_show(tmp_path):
    cfg = BSMamba2Config(dim=16, depth=1, expand=2, headdim=8, d_state=6, ngroups=2, n_stems=2,
                         targets=("vocals", "drums"))
    model = BSMamba2(cfg).eval()
    path = save_model(model, tmp_path / "sub" / "g2.safetensors")
    assert load_model(path).config == cfg
    assert not list(path.parent.glob(".*.tmp"))  # nothing half-written left behind
    spec = small_spec()
    assert torch.equal(outputs(load_model(path), spec), outputs(model, spec))


def test_infer_config_mono_and_paper():
    mono = BSMamba2Config(dim=16, depth=1, expand=2, headdim=16, d_state=8, stereo=False)
    assert infer_config(BSMamba2(mono).state_dict()) == mono
    assert infer_config(BSMamba2().state_dict()) == BSMamba2Config()


def test_device_and_public_api(data_dir):
    model = bsmamba2.load_model(data_dir / "tiny_plain.pt", device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    weights, cfg, ema = read_weights(data_dir / "tiny.ckpt", ema=True)
    assert cfg is None and len(ema) == len(list(model.parameters()))
    assert not any(k.startswith(("model.", "featurizer")) for k in weights)


def test_refuses_empty_file(tmp_path):
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert_one_line(exc, "empty", "0 bytes", str(path))


def test_refuses_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "nope.ckpt")
    assert_one_line(exc, "no such checkpoint")


@pytest.mark.parametrize("name", ["tiny.ckpt", "tiny_plain.pt"])
def test_refuses_truncated_file(tmp_path, data_dir, name):
    data = (data_dir / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert_one_line(exc, "truncated or corrupt", str(path))


def test_refuses_truncated_safetensors(tmp_path, small_model):
    path = save_model(small_model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert_one_line(exc, "truncated or corrupt")


def test_refuses_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert_one_line(exc, "not a readable PyTorch checkpoint")


class Exploit:
    """Unpickling this with a plain unpickler would create a marker file (it runs code)."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_pickled_code_never_runs(tmp_path, small_model, container):
    marker = tmp_path / "pwned"
    evil = Exploit()
    evil.marker = marker
    payload = {"state_dict": small_model.state_dict(), "hyper_parameters": evil}
    path = tmp_path / "evil.ckpt"
    torch.save(payload, path, _use_new_zipfile_serialization=(container == "zip"))
    # Sanity: the payload really is dangerous for a plain unpickler.
    if container == "zip":
        with zipfile.ZipFile(path) as z:
            raw = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        assert b"touch" in raw
    model = load_model(path)  # the weights load, the exploit is an inert stand-in
    assert not marker.exists()
    spec = small_spec()
    assert torch.equal(outputs(model, spec), outputs(small_model, spec))


def test_pure_exploit_pickle_is_unknown_layout(tmp_path):
    marker = tmp_path / "pwned"
    evil = Exploit()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert not marker.exists()
    assert "\n" not in str(exc.value)


def test_refuses_wrong_shape(tmp_path, small_model):
    sd = dict(small_model.state_dict())
    key = "layers.1.1.forward_blocks.0.mixer.out_proj.weight"
    sd[key] = torch.randn(16, 31)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert_one_line(exc, "shape mismatch", key, "[16, 31]", "[16, 32]")


def test_refuses_foreign_state_dict(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert_one_line(exc, "not a BSMamba2 state dict", "final_norm.gamma")


def test_refuses_extra_and_missing_keys(tmp_path, small_model):
    sd = dict(small_model.state_dict())
    sd["surprise.weight"] = torch.ones(1)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "extra.pt")
    assert_one_line(exc, "unexpected key 'surprise.weight'")
    sd.pop("surprise.weight")
    sd.pop("layers.0.0.linear.bias")
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "missing.pt")
    assert_one_line(exc, "missing key 'layers.0.0.linear.bias'")


def test_ema_requires_ema_weights(tmp_path, data_dir):
    with pytest.raises(CheckpointError) as exc:
        load_model(data_dir / "tiny_plain.pt", ema=True)
    assert_one_line(exc, "no EMA weights")


def _damage_every_tensor(source: Path, target: Path) -> None:
    """64 bytes of 0xFF (a float32 NaN) inside each stored tensor, as a bad download does:
    the zip and the pickle stay readable."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size < 64:
                continue
            name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
            extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
            start = info.header_offset + 30 + name_len + extra_len + (info.file_size - 64) // 8 * 4
            data[start : start + 64] = b"\xff" * 64
    target.write_bytes(data)


def test_refuses_non_finite_weights(tmp_path, data_dir, small_model):
    _damage_every_tensor(data_dir / "tiny.ckpt", tmp_path / "damaged.ckpt")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "damaged.ckpt")
    assert_one_line(exc, str(tmp_path / "damaged.ckpt"), "16 NaN or infinite values in 'layers.0.0.forward_blocks.0.norm.weight'")
    sd = dict(small_model.state_dict())
    sd["layers.1.0.linear.bias"] = sd["layers.1.0.linear.bias"].clone()
    sd["layers.1.0.linear.bias"][3] = float("inf")
    save_file(sd, tmp_path / "inf.safetensors")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "inf.safetensors")
    assert_one_line(exc, "inf.safetensors: 1 NaN or infinite values in 'layers.1.0.linear.bias'")


def test_every_layout_error_names_the_file(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.randn(4, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert_one_line(exc, f"{path}: not a BSMamba2 state dict")
    sd = BSMamba2(SMALL).state_dict()
    sd["band_split.to_features.0.0.gamma"] = torch.ones(5)
    torch.save(sd, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "odd.pt")
    assert_one_line(exc, f"{tmp_path / 'odd.pt'}: unknown BSMamba2 layout")
