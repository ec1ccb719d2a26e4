"""The Mamba-3 mixer against the official layer's golden outputs and gradients, its
parameter layout and counts, and BSMamba2 with ``mixer: mamba3`` (config, checkpoints)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bsmamba2.checkpoint.io import infer_config, load_model, save_model
from bsmamba2.model import BSMamba2, BSMamba2Config
from bsmamba2.model.mamba3 import Mamba3, Mamba3Mixer, heavy_tail
from bsmamba2.model.mixers import set_recompute
from tests.helpers.kernels import DEVICE
from tests.helpers.mamba3 import FIXTURES
from tests.helpers.numerics import rel_err

VARIANTS = {"siso": {}, "siso_outproj_norm": {"outproj_norm": True}, "mimo_r2": {"mimo_rank": 2}}
SMALL = {"dim": 16, "depth": 1, "expand": 2, "headdim": 16, "d_state": 16, "mixer": "mamba3", "bands": (512, 513)}


def fixture_layer(variant: str, dtype: torch.dtype) -> tuple[Mamba3, dict[str, torch.Tensor], list[str]]:
    path = FIXTURES / f"{variant}.safetensors"
    with safe_open(str(path), "pt") as f:
        order = json.loads(f.metadata()["fixture"])["param_order"]
    t = load_file(path)
    layer = Mamba3(32, d_state=16, expand=2, headdim=16, **VARIANTS[variant]).to(dtype)
    layer.load_state_dict({k[11:]: v.to(dtype) for k, v in t.items() if k.startswith("state_dict.")}, strict=True)
    return layer, t, json.loads(order) if isinstance(order, str) else order


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("dtype", "tol_y", "tol_grad"), [(torch.float64, 1e-12, 1e-12),
                                                         (torch.float32, 1e-5, 1e-4)])
def test_matches_the_official_layer(variant, dtype, tol_y, tol_grad):
    layer, t, order = fixture_layer(variant, dtype)
    assert [name for name, _ in layer.named_parameters()] == order == list(layer.state_dict())
    u = t["u"].to(dtype).requires_grad_()
    y = layer(u)
    assert y.dtype == dtype and rel_err(y, t["y"]) <= tol_y
    (y * t["w"].to(dtype)).sum().backward()
    assert rel_err(u.grad, t["grad.u"]) <= tol_grad
    for name, param in layer.named_parameters():
        assert rel_err(param.grad, t[f"grad.{name}"]) <= tol_grad, name


@pytest.mark.parametrize("variant", ["siso_outproj_norm", "mimo_r2"])
def test_matches_the_official_layer_through_the_kernels(variant, monkeypatch):
    """fp32 through our Triton kernels (the interpreter on a CPU; tf32 dots on a GPU: 5e-3)."""
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    layer, t, _ = fixture_layer(variant, torch.float32)
    layer.to(DEVICE)
    u = t["u"].float().to(DEVICE).requires_grad_()
    y = layer(u)
    tol = 5e-3 if DEVICE == "cuda" else 1e-4
    assert rel_err(y.cpu(), t["y"]) <= tol
    (y * t["w"].float().to(DEVICE)).sum().backward()
    assert rel_err(u.grad.cpu(), t["grad.u"]) <= tol
    for name, param in layer.named_parameters():
        assert rel_err(param.grad.cpu(), t[f"grad.{name}"]) <= tol, name


@pytest.mark.parametrize("rank", [1, 2])
def test_reverse_layer_is_the_flipped_layer(rank, monkeypatch):
    """``reverse`` (the backward direction's mixer): the layer on the flipped sequence, flipped
    back. Float64 on the reference path, with gradients; through the kernels without a
    backward (the scan walks the steps backwards) against that float64 result."""
    torch.manual_seed(3)
    layer = Mamba3(16, d_state=16, expand=2, headdim=16, mimo_rank=rank).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    u = torch.randn(2, 37, 16, dtype=torch.float64, requires_grad=True)
    want = layer(u.flip(1)).flip(1)
    want_g = torch.autograd.grad(want.square().sum(), [u, *layer.parameters()])
    layer.reverse = True
    got = layer(u)
    got_g = torch.autograd.grad(got.square().sum(), [u, *layer.parameters()])
    assert rel_err(got, want) <= 1e-13
    for g, w in zip(got_g, want_g, strict=True):
        assert rel_err(g, w) <= 1e-12
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    layer32 = layer.float().to(DEVICE)
    with torch.no_grad():
        got32 = layer32(u.detach().float().to(DEVICE))
        unprojected = layer32.unprojected(u.detach().float().to(DEVICE))
    tol = 5e-3 if DEVICE == "cuda" else 1e-4  # tf32 dots on a GPU
    assert rel_err(got32.cpu(), want) <= tol
    torch.testing.assert_close(layer32.out_proj(unprojected), got32, rtol=0, atol=0)


def test_layout_and_init_at_bsmamba2_size():
    """Keys, shapes and sizes of params.tsv (the official module at d_model 256); the official init."""
    rows = [line.split("\t") for line in (FIXTURES / "params.tsv").read_text().splitlines()[1:]]
    for variant, kwargs in {"siso": {}, "siso_outproj_norm": {"outproj_norm": True},
                            "mimo_r2": {"mimo_rank": 2}, "mimo_r4": {"mimo_rank": 4}}.items():
        want = [(key, json.loads(shape)) for v, key, shape, _ in rows if v == variant]
        with torch.device("meta"):
            layer = Mamba3(256, expand=4, **kwargs)
        assert [(k, list(p.shape)) for k, p in layer.state_dict().items()] == want, variant
    layer = Mamba3(32, d_state=16, headdim=16, mimo_rank=4)
    assert torch.equal(layer.B_bias, torch.ones(4, 4, 16)) and torch.equal(layer.D, torch.ones(4))
    assert torch.equal(layer.mimo_x, torch.full((4, 4, 16), 0.25)) and torch.equal(layer.mimo_z, torch.ones(4, 4, 16))
    dt = torch.nn.functional.softplus(layer.dt_bias)
    assert ((dt > 9e-4) & (dt < 0.11)).all()


def test_paper_size_parameter_counts():
    with torch.device("meta"):
        counts = {r: sum(p.numel() for p in BSMamba2(mixer="mamba3", mixer_options={"mimo_rank": r}).parameters())
                  for r in (1, 4)}
    assert counts == {1: 48_417_292, 4: 53_725_708}


def test_heavy_tail_activation():
    x = torch.tensor([-3.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    torch.testing.assert_close(heavy_tail(x), torch.tensor([0.25, 2 / 3, 1.25, 3.0], dtype=torch.float64))


def test_config_is_inferred_and_checkpoints_round_trip(tmp_path):
    for options in ({}, {"mimo_rank": 4}, {"rope_fraction": 1.0, "outproj_norm": True}):
        model = BSMamba2(BSMamba2Config(**SMALL, mixer_options=options))
        assert infer_config(model.state_dict()) == model.config
    model.eval()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    save_model(model, tmp_path / "ours.safetensors")
    spec = torch.randn(1, 2, 1025, 6, dtype=torch.complex64)
    with torch.no_grad():
        want = model(spec)
        for name in ("plain.pt", "ours.safetensors"):
            loaded = load_model(tmp_path / name)
            assert loaded.config == model.config
            torch.testing.assert_close(loaded(spec), want, rtol=0, atol=0)


def test_recompute_changes_no_gradient():
    layer = Mamba3Mixer(16, d_state=16, expand=2, headdim=16, mimo_rank=2)
    u = torch.randn(2, 37, 16)
    grads = []
    for mode in ("none", "mixer"):
        set_recompute(layer, mode)
        assert layer.recompute == mode
        layer.zero_grad()
        layer(u).square().sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown mixer 'mamba4'"):
        BSMamba2Config(mixer="mamba4")
    with pytest.raises(ValueError, match="rope_fraction"):
        Mamba3(32, rope_fraction=0.25)
    with pytest.raises(ValueError, match="mimo_rank"):
        Mamba3(32, mimo_rank=0)


def test_chunk_size_reaches_the_scan_and_changes_no_result(monkeypatch):
    """``chunk_size`` (steps; default 64 / R) is handed to the scan, and any chunk gives the same."""
    from bsmamba2 import ops

    seen, original = [], ops.mamba3_scan
    monkeypatch.setattr(ops, "mamba3_scan", lambda *a, **kw: seen.append(kw["chunk_size"]) or original(*a, **kw))
    u = torch.randn(2, 37, 16, dtype=torch.float64)
    for rank in (1, 4):
        torch.manual_seed(0)
        default = Mamba3(16, d_state=16, headdim=16, mimo_rank=rank).double()
        torch.manual_seed(0)
        small = Mamba3(16, d_state=16, headdim=16, mimo_rank=rank, chunk_size=5).double()
        want = default(u)
        assert rel_err(small(u), want) <= 1e-12
    assert seen == [64, 5, 16, 5]
    assert Mamba3Mixer(16, d_state=16, headdim=16, chunk_size=8).chunk_size == 8
    with pytest.raises(ValueError, match="chunk_size"):
        Mamba3(32, chunk_size=0)
