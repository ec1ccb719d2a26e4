"""The Mamba-1 mixer (``mixer: mamba``) against the official implementation: layout, golden
outputs of official checkpoints, the layer on its own, gradients, loading and its errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bsmamba2
from bsmamba2.checkpoint import CheckpointError, infer_config, load_model, read_weights, save_model
from bsmamba2.model import BSMamba2, BSMamba2Config, Mamba, istft
from bsmamba2.model.mixers import set_recompute
from bsmamba2.ops.cpu import build
from bsmamba2.ops.cpu import selective as cpu_selective
from bsmamba2.ops.reference import selective_scan_sequential
from bsmamba2.separation.batching import segment_bytes
from tests.helpers.numerics import rel_err

pytestmark = pytest.mark.usefixtures("one_thread")
MIXER = "layers.0.0.forward_blocks.0.mixer."
SMALL = BSMamba2Config(mixer="mamba", dim=16, depth=1, expand=2, d_state=4)


@pytest.fixture(scope="module")
def fixtures(data_dir):
    folder = data_dir / "official_mamba1"
    with np.load(folder / "expected.npz") as npz:
        return folder, {k: npz[k] for k in npz.files}


def test_paper_layout_equals_official_keys(fixtures):
    folder, _ = fixtures
    model = BSMamba2(BSMamba2Config(mixer="mamba"))
    rows = [line.split("\t") for line in (folder / "keys_full.tsv").read_text().splitlines()[1:]]
    theirs = [(k, [int(d) for d in s.strip("[]").split(",")]) for k, s in rows]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == theirs
    assert [n for n, _ in model.named_parameters()] == [k for k, _ in theirs]
    assert sum(p.numel() for p in model.parameters()) == 48_385_804
    cfg = model.config
    assert (cfg.d_state, cfg.expand, cfg.d_conv, cfg.headdim) == (16, 4, 4, None)
    assert model.layers[0][0].forward_blocks[0].mixer.dt_rank == 16  # ceil(256 / 16)


@pytest.mark.parametrize("layout,ema", [("ckpt", False), ("ckpt", True), ("plain", False)])
@pytest.mark.parametrize("dtype,tol,scan", [
    pytest.param(torch.float32, 1e-5, "c", marks=pytest.mark.skipif(build.compiler() is None,
                                                                     reason="no C compiler for the C scan")),
    (torch.float32, 1e-5, "torch"), (torch.float64, 2e-6, "torch")])
def test_golden_outputs(tmp_path, monkeypatch, fixtures, layout, ema, dtype, tol, scan):
    """The official checkpoint (raw and EMA weights; Lightning or plain state dict) reproduces
    the official outputs; the mixer is inferred (module_type, or the keys alone). The CPU scan
    is our C kernel (float32; it takes no float64) or the PyTorch one (BSMAMBA2_CPU_SCAN)."""
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", scan)
    calls, real = [], cpu_selective._scan
    monkeypatch.setattr(cpu_selective, "_scan", lambda *a: (calls.append(1), real(*a))[1])
    folder, expected = fixtures
    path = folder / "tiny.ckpt"
    if layout == "plain":  # the raw weights, without the "model." prefix
        weights, _, _ = read_weights(path)
        path = tmp_path / "tiny_plain.pt"
        torch.save(weights, path)
    model = load_model(path, ema=ema).to(dtype)
    assert (model.config.mixer, model.config.dim, model.config.mixer_options) == ("mamba", 16, {"dt_rank": 1})
    spec = torch.from_numpy(expected["spec_in"])[None].to(torch.complex64 if dtype == torch.float32
                                                           else torch.complex128)
    with torch.no_grad():
        out = model(spec)[0, 0]
    assert bool(calls) == (scan == "c")
    key = "spec_out_ema" if ema else "spec_out"
    assert rel_err(out, expected[key]) <= tol
    assert rel_err(out, expected["spec_out" if ema else "spec_out_ema"]) > 0.1  # other weights
    wav = istft(out.to(torch.complex64), model.config)
    assert wav.shape == (2, 441 * (spec.shape[-1] - 1))
    assert rel_err(wav, expected["wav_out_ema" if ema else "wav_out"]) <= max(tol, 1e-5)


def _layer_float64(layer: Mamba, u: torch.Tensor) -> torch.Tensor:
    """The official layer's math written out in float64 (nn.functional.conv1d, the oracle scan)."""
    w = {k: v.double() for k, v in layer.state_dict().items()}
    d, n, r = layer.d_inner, layer.d_state, layer.dt_rank
    xz = u.double() @ w["in_proj.weight"].T
    x, z = xz[..., :d], xz[..., d:]
    x = F.conv1d(x.transpose(1, 2), w["conv1d.weight"], w["conv1d.bias"], padding=3, groups=d)
    x = F.silu(x[..., : u.shape[1]])  # (b, d, l)
    dbl = x.transpose(1, 2) @ w["x_proj.weight"].T
    delta = (dbl[..., :r] @ w["dt_proj.weight"].T).transpose(1, 2)
    B, C = dbl[..., r : r + n].transpose(1, 2), dbl[..., r + n :].transpose(1, 2)
    y, _ = selective_scan_sequential(
        x, delta, -torch.exp(w["A_log"]), B, C, w["D"], z.transpose(1, 2), w["dt_proj.bias"], True)
    return y.transpose(1, 2) @ w["out_proj.weight"].T


def test_layer_alone_loads_official_state_dict_strict(fixtures):
    """``Mamba(d_model, expand=4)`` takes an official mamba_simple.Mamba state dict
    (strict) and computes its math, forward and backward."""
    folder, _ = fixtures
    weights, _, _ = read_weights(folder / "tiny.ckpt")
    official = {k[len(MIXER):]: v for k, v in weights.items() if k.startswith(MIXER)}
    layer = Mamba(16, expand=4)  # mamba_simple.Mamba's defaults otherwise (d_state 16, dt_rank 1)
    assert list(layer.state_dict()) == list(official)
    layer.load_state_dict(official, strict=True)
    u = torch.randn(2, 37, 16, requires_grad=True)
    y = layer(u)
    want = _layer_float64(layer, u)
    assert y.shape == u.shape and rel_err(y, want) < 1e-5
    (du,) = torch.autograd.grad(y, u, torch.ones_like(y))
    (du_want,) = torch.autograd.grad(want, u, torch.ones_like(want))
    assert rel_err(du, du_want) < 1e-4


def test_layer_official_init():
    """S4D-real A (A_n = −n), D = 1, dt_proj: U(±dt_rank^−½) weight, bias = softplus⁻¹ of
    Δ ∈ [1e-3, 1e-1]; dt_rank ceil(d_model / 16); no Linear biases."""
    layer = Mamba(40, d_state=8, expand=2)
    assert layer.dt_rank == math.ceil(40 / 16) == 3
    assert torch.allclose(torch.exp(layer.A_log), torch.arange(1, 9.0).repeat(80, 1), rtol=1e-6)
    assert torch.equal(layer.D, torch.ones(80))
    assert layer.dt_proj.weight.abs().max() <= 3**-0.5
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001 and dt.std() > 0
    assert layer.in_proj.bias is None and layer.out_proj.bias is None and layer.conv1d.bias is not None


def test_gradients_float32_match_float64():
    """Backward of a whole Mamba-1 model (reference path) in float32 against float64."""
    model = BSMamba2(SMALL)
    spec = torch.randn(1, 2, 1025, 20, dtype=torch.complex128)
    target = torch.randn(1, 1, 2, 1025, 20, dtype=torch.complex128)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        m = BSMamba2(SMALL).to(dtype)
        m.load_state_dict(model.state_dict())
        s = spec.to(torch.complex64 if dtype == torch.float32 else torch.complex128)
        (m(s) - target.to(s.dtype)).abs().mean().backward()
        grads[dtype] = {n: p.grad for n, p in m.named_parameters()}
    for name, g64 in grads[torch.float64].items():
        assert rel_err(grads[torch.float32][name], g64) <= 1e-3, name


def test_recompute_changes_no_gradient():
    model = BSMamba2(SMALL)
    spec = torch.randn(1, 2, 1025, 12, dtype=torch.complex64)
    runs = []
    for mode in ("none", "mixer"):
        set_recompute(model, mode)
        model.zero_grad()
        model(spec).abs().mean().backward()
        runs.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_config_round_trips_and_our_format(tmp_path):
    cfg = BSMamba2Config.from_dict({**SMALL.to_dict()})
    assert cfg == SMALL and cfg.to_dict()["mixer"] == "mamba"
    assert segment_bytes(SMALL, 44100, 2) > 0  # the separator's memory estimate knows the mixer
    model = BSMamba2(SMALL).eval()
    path = save_model(model, tmp_path / "m1.safetensors")
    loaded = load_model(path)
    assert loaded.config == SMALL
    spec = torch.randn(1, 2, 1025, 5, dtype=torch.complex64)
    with torch.no_grad():
        assert torch.equal(loaded(spec), model(spec))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    inferred = infer_config(torch.load(tmp_path / "plain.pt"))  # from the shapes alone
    assert inferred == BSMamba2Config(**{**SMALL.to_dict(), "mixer_options": {"dt_rank": 1}})


def test_config_defaults_and_errors():
    """Per-mixer defaults; Mamba-2's options are refused for Mamba-1 and the other way round."""
    assert BSMamba2Config().d_state == 128 and BSMamba2Config(mixer="mamba").d_state == 16
    assert BSMamba2Config(mixer="mamba", mixer_options={"dt_rank": 8}).mixer_options == {"dt_rank": 8}
    with pytest.raises(ValueError, match="has no option 'headdim'"):
        BSMamba2Config(mixer="mamba", headdim=64)
    with pytest.raises(ValueError, match="unknown mixer_options for mamba2: dt_rank"):
        BSMamba2Config(mixer_options={"dt_rank": 4})


def test_mixed_or_contradicting_layouts_are_one_line_errors(tmp_path, fixtures):
    folder, _ = fixtures
    weights, _, _ = read_weights(folder / "tiny.ckpt")
    with pytest.raises(CheckpointError, match="module_type 'mamba2'") as exc:
        infer_config(weights, module_type="mamba2")
    assert "\n" not in str(exc.value)
    mamba2 = BSMamba2(BSMamba2Config(dim=16, depth=2, expand=4, headdim=16, d_state=8)).state_dict()
    assert infer_config(weights).mixer == "mamba"
    mixed = {**weights}
    prefix = "layers.1.0.forward_blocks.0.mixer."
    for key in [k for k in mixed if k.startswith(prefix)]:
        del mixed[key]
    mixed.update({k: v for k, v in mamba2.items() if k.startswith(prefix)})
    torch.save(mixed, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="mixed mixer layouts") as exc:
        bsmamba2.load_model(tmp_path / "mixed.pt")
    assert "\n" not in str(exc.value) and "mixed.pt" in str(exc.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels at model level need a GPU")
def test_triton_model_matches_reference_on_gpu(monkeypatch):
    """A Mamba-1 model through the Triton selective scan against the PyTorch path: output and
    every parameter gradient (fp32, tf32 products)."""
    model = BSMamba2(BSMamba2Config(mixer="mamba", dim=32, depth=1)).cuda()
    spec = torch.randn(2, 2, 1025, 90, dtype=torch.complex64, device="cuda")
    runs = {}
    for kernels in ("torch", "triton"):
        monkeypatch.setenv("BSMAMBA2_KERNELS", kernels)
        model.zero_grad()
        out = model(spec)
        out.abs().mean().backward()
        runs[kernels] = (out.detach(), [p.grad.clone() for p in model.parameters()])
    assert rel_err(runs["triton"][0], runs["torch"][0]) < 5e-3
    for (name, _), a, b in zip(model.named_parameters(), runs["triton"][1], runs["torch"][1], strict=True):
        assert rel_err(a, b) < 2e-2, name
