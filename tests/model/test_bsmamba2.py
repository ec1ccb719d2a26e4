"""BSMamba2 against the official implementation: layout, golden outputs, gradients."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

import bsmamba2
from bsmamba2.model import BSMamba2, BSMamba2Config, istft, stft
from bsmamba2.model.blocks import BidirectionalMamba
from tests.helpers.numerics import rel_err


def test_paper_layout_equals_official_keys(data_dir):
    model = BSMamba2()
    rows = [line.split("\t") for line in (data_dir / "keys_full.tsv").read_text().splitlines()[1:]]
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(k, [int(d) for d in s.strip("[]").split(",")]) for k, s in rows]
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == 48_098_188
    # parameters() order is the state-dict order (the official EMA tuple relies on it)
    assert [n for n, _ in model.named_parameters()] == [k for k, _ in theirs]


def test_stft_of_input_equals_official(data_dir, expected):
    audio, sr = sf.read(data_dir / "input.wav", dtype="float32", always_2d=True)
    assert sr == 44100
    spec = stft(torch.from_numpy(audio.T.copy()), BSMamba2Config())
    assert rel_err(spec, expected["spec_in"]) <= 1e-6


@pytest.mark.parametrize("name", ["tiny.ckpt", "tiny_plain.pt"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-6)])
def test_golden_outputs(data_dir, expected, name, dtype, tol):
    model = bsmamba2.load_model(data_dir / name).to(dtype)
    spec = torch.from_numpy(expected["spec_in"])[None].to(torch.complex64 if dtype == torch.float32 else torch.complex128)
    with torch.no_grad():
        out = model(spec)
    assert out.shape == (1, 1, 2, 1025, 201)
    assert rel_err(out[0, 0], expected["spec_out"]) <= tol
    wav = istft(out[0, 0].to(torch.complex64), model.config)
    assert wav.shape == (2, 88200)
    assert rel_err(wav, expected["wav_out"]) <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-6)])
def test_golden_outputs_ema(data_dir, expected, dtype, tol):
    model = bsmamba2.load_model(data_dir / "tiny.ckpt", ema=True).to(dtype)
    spec = torch.from_numpy(expected["spec_in"])[None].to(torch.complex64 if dtype == torch.float32 else torch.complex128)
    with torch.no_grad():
        out = model(spec)[0, 0]
    assert rel_err(out, expected["spec_out_ema"]) <= tol
    assert rel_err(out, expected["spec_out"]) > 1e-3  # the EMA weights really are other weights


def test_gradients_float32_match_float64():
    """Backward of the whole model (reference path) in float32 against float64."""
    cfg = BSMamba2Config(dim=16, depth=1, expand=2, headdim=8, d_state=8)
    model = BSMamba2(cfg)
    spec = torch.randn(1, 2, 1025, 20, dtype=torch.complex128)
    target = torch.randn(1, 1, 2, 1025, 20, dtype=torch.complex128)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        m = BSMamba2(cfg).to(dtype)
        m.load_state_dict(model.state_dict())
        s = spec.to(torch.complex64 if dtype == torch.float32 else torch.complex128)
        loss = (m(s) - target.to(s.dtype)).abs().mean()
        loss.backward()
        grads[dtype] = {n: p.grad for n, p in m.named_parameters()}
    for name, g64 in grads[torch.float64].items():
        assert rel_err(grads[torch.float32][name], g64) <= 1e-3, name


def test_mixer_with_and_without_gradients_same_function():
    """With gradients the mixer's in_proj runs one product per piece (no concatenation of
    their gradients), without them one product: same output; and the gradients of the
    input and of in_proj's weight pass a finite-difference check (float64)."""
    from bsmamba2.model.mamba2 import Mamba2

    mixer = Mamba2(8, d_state=4, expand=2, headdim=4).double()
    u = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        plain = mixer(u)
    assert rel_err(mixer(u).detach(), plain) <= 1e-14
    params = dict(mixer.named_parameters())
    weight = params["in_proj.weight"].detach().clone().requires_grad_()

    def run(u, weight):
        return torch.func.functional_call(mixer, {**params, "in_proj.weight": weight}, (u,))

    assert torch.autograd.gradcheck(run, (u, weight))


def test_mixer_under_autocast_saves_one_copy_of_its_input():
    """The three in_proj products share one cast copy of the input for the backward."""
    from bsmamba2.model.mamba2 import Mamba2

    mixer = Mamba2(16, d_state=8, expand=2, headdim=8)
    u = torch.randn(2, 30, 16, requires_grad=True) * 1.0  # an activation (autocast caches leaves' casts)
    saved = []

    def pack(t):
        if t.numel() == u.numel() and t.dtype == torch.bfloat16:  # u's cast copy, maybe as (b·l, d)
            saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixer(u)
    assert len(saved) == 3 and len(set(saved)) == 1


def test_bidirectional_modules_in_pieces_give_the_whole(monkeypatch):
    """CPU inference runs each bidirectional module on equal pieces of its sequences (the last
    filled up with zeros, dropped): the same result, one input shape for a compiled module."""
    from bsmamba2.model import bsmamba2 as net

    cfg = BSMamba2Config(dim=16, depth=1, expand=2, headdim=8, d_state=8)
    module = BidirectionalMamba(cfg).double()
    x = torch.randn(7, 20, 16, dtype=torch.float64)
    shapes = []
    module.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    with torch.no_grad():
        whole = module(x)
        got = net.in_pieces(module, x, tokens=60)  # 3 sequences per piece: 3 pieces of 3, 2 of them padding
    assert shapes == [(7, 20, 16)] + [(3, 20, 16)] * 3
    assert (got - whole).abs().max() <= 1e-13 * whole.abs().max()
    assert net.in_pieces(module, x, tokens=60).shape == x.shape
    x.requires_grad_(True)
    shapes.clear()
    net.in_pieces(module, x, tokens=60).sum().backward()  # with gradients: one call
    assert shapes == [(7, 20, 16)] and x.grad is not None

    model = BSMamba2(cfg).double()
    spec = torch.randn(1, 2, 1025, 30, dtype=torch.complex128)
    with torch.no_grad():
        ref = model(spec)
        monkeypatch.setattr(net, "PIECE_TOKENS", 100)  # 3 of 62 bands, 1 of 30 frames
        out = model(spec)
    assert rel_err(out, ref) <= 1e-12


def test_shapes_mono_and_several_stems():
    cfg = BSMamba2Config(dim=16, depth=1, expand=2, headdim=16, d_state=8, stereo=False, n_stems=2)
    model = BSMamba2(cfg).eval()
    spec = torch.randn(2, 1, 1025, 9, dtype=torch.complex64)
    with torch.no_grad():
        out = model(spec)
    assert out.shape == (2, 2, 1, 1025, 9) and out.dtype == torch.complex64
    with pytest.raises(ValueError, match="expected a spectrogram"):
        model(torch.randn(1, 2, 1025, 9, dtype=torch.complex64))


def test_config_validation_and_yaml(tmp_path):
    assert BSMamba2Config.from_yaml("configs/bsmamba2.yaml") == BSMamba2Config()
    small = BSMamba2Config.from_yaml("configs/bsmamba2-small.yaml")
    assert (small.dim, small.depth, small.d_state) == (32, 2, 16)
    assert BSMamba2(small)(torch.randn(1, 2, 1025, 5, dtype=torch.complex64)).shape == (1, 1, 2, 1025, 5)
    for path, mixer in (("configs/bsmamba2-mamba1.yaml", "mamba"), ("configs/bsmamba2-mamba3.yaml", "mamba3")):
        paper = BSMamba2Config.from_yaml(path)
        assert (paper.mixer, paper.bands, paper.dim) == (mixer, BSMamba2Config().bands, 256)
    with pytest.raises(ValueError, match="bands cover"):
        BSMamba2Config(bands=(512, 512))
    with pytest.raises(ValueError, match="headdim"):
        BSMamba2Config(dim=20, headdim=64)
    with pytest.raises(ValueError, match="2 target names for 1 stems"):
        BSMamba2Config(targets=("vocals", "bass"))
    assert BSMamba2Config().stem_names == ("vocals",)
    assert BSMamba2Config(n_stems=2).stem_names == ("stem1", "stem2")
    named = BSMamba2Config(n_stems=2, targets=["drums", "bass"])
    assert named.stem_names == ("drums", "bass") and BSMamba2Config.from_dict(named.to_dict()) == named
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dimm: 3\n")
    with pytest.raises(ValueError, match="unknown BSMamba2 config keys: dimm"):
        BSMamba2Config.from_yaml(bad)


@pytest.mark.parametrize("ema", [False, True])
def test_bf16_autocast_close_to_float32(expected, data_dir, ema):
    """bf16 is ``--precision auto`` on CPUs with bf16 instructions because the official golden
    model stays within 1e-2 of float32 in it (bsmamba2.device.cpu_has_fast_bf16)."""
    model = bsmamba2.load_model(data_dir / "tiny.ckpt", ema=ema)
    spec = torch.from_numpy(expected["spec_in"])[None]
    with torch.inference_mode():
        ref = model(spec)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(spec)
    assert out.dtype == torch.complex64
    assert torch.isfinite(out.abs()).all()
    assert 1e-4 < rel_err(out, ref) <= 1e-2  # bf16 really ran, and stayed close
    assert rel_err(istft(out[0, 0], model.config), istft(ref[0, 0], model.config)) <= 1e-2
