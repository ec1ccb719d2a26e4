"""The bidirectional module: the backward direction as the official flip → block → flip, and
with a Mamba-2, Mamba-1 or Mamba-3 mixer as a mixer that walks the sequence backwards (no
flipped copies)."""

from __future__ import annotations

import copy

import pytest
import torch

from bsmamba2 import ops
from bsmamba2.model import BSMamba2Config
from bsmamba2.model.blocks import BidirectionalMamba
from tests.helpers.kernels import DEVICE, assert_close
from tests.helpers.numerics import rel_err

CFG = BSMamba2Config(dim=16, expand=2, headdim=8, d_state=8)
CFGS = {"mamba2": CFG, "mamba": BSMamba2Config(dim=16, mixer="mamba", expand=1, d_state=4),
        "mamba3": BSMamba2Config(dim=16, mixer="mamba3", expand=2, headdim=16, d_state=16)}
STEPS = {"mamba2": (70, 37), "mamba": (11, 10), "mamba3": (70, 37)}
"""Sequence lengths of the kernel tests (Triton's interpreter runs the selective scan step by
step: short sequences, still several 4-step chunks with a ragged end)."""


def flipped_formula(module: BidirectionalMamba, x: torch.Tensor) -> torch.Tensor:
    """The official computation, with the backward block's mixer walking forwards."""
    fwd_block, bwd_block = module.forward_blocks[0], module.backward_blocks[0]
    bwd_block.mixer.reverse = False
    try:
        merged = torch.cat([fwd_block(x), bwd_block(x.flip(1)).flip(1)], dim=-1)
    finally:
        bwd_block.mixer.reverse = True
    return x + torch.nn.functional.linear(merged, module.linear.weight[:, :, 0].t(), module.linear.bias)


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module


@pytest.mark.parametrize("mixer", ["mamba2", "mamba", "mamba3"])
def test_backward_mixers_reverse(mixer):
    module = BidirectionalMamba(BSMamba2Config(dim=16, mixer=mixer))
    assert module.reverses
    assert module.backward_blocks[0].mixer.reverse and not module.forward_blocks[0].mixer.reverse


@pytest.mark.parametrize("mixer", list(CFGS))
def test_reverse_mixer_equals_the_flipped_block_float64(mixer):
    """On the reference path the reversing mixer flips around itself: exactly the official."""
    torch.manual_seed(0)
    module = randomised(BidirectionalMamba(CFGS[mixer]).double())
    x = torch.randn(3, 21, 16, dtype=torch.float64, requires_grad=True)
    out, ref = module(x), flipped_formula(module, x)
    assert rel_err(out, ref) <= 1e-13
    dy = torch.randn_like(ref)
    got = torch.autograd.grad(out, [x, *module.parameters()], dy)
    want = torch.autograd.grad(ref, [x, *module.parameters()], dy)
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) <= 1e-13


@pytest.mark.parametrize("mixer", list(CFGS))
def test_reverse_mixer_in_the_kernels_matches_float64(mixer):
    """With the Triton kernels (Triton's interpreter on a CPU) the backward mixer walks the
    sequence backwards in the conv and scan kernels; outputs and gradients against the
    float64 flipped formula."""
    torch.manual_seed(1)
    module = randomised(BidirectionalMamba(CFGS[mixer])).to(DEVICE)
    x = torch.randn(2, STEPS[mixer][0], 16, device=DEVICE, requires_grad=True)
    with ops.use_backend("triton"):
        assert ops.reverses_in_kernels(x, {"mamba2": "ssd", "mamba": "selective"}.get(mixer, mixer))
        out = module(x)
        dy = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, *module.parameters()], dy)
    module64 = copy.deepcopy(module).double()
    x64 = x.detach().double().requires_grad_()
    ref = flipped_formula(module64, x64)
    want = torch.autograd.grad(ref, [x64, *module64.parameters()], dy.double())
    assert_close("out", out, ref, torch.float32)
    for (name, _), g, w in zip([("x", None), *module.named_parameters()], got, want, strict=True):
        assert_close(f"d{name}", g, w, torch.float32)


@pytest.mark.parametrize("mixer", list(CFGS))
def test_inference_folds_out_proj_into_the_merge(mixer):
    """In inference with the kernels the mixers' out_proj is folded into the merge's product
    (one product per direction): the output against the float64 flipped formula, in fp32 and
    under bf16 autocast; with gradients, or on the reference path, nothing is folded."""
    torch.manual_seed(2)
    module = randomised(BidirectionalMamba(CFGS[mixer])).to(DEVICE)
    x = torch.randn(3, STEPS[mixer][1], 16, device=DEVICE)
    module64 = copy.deepcopy(module).double()
    ref = flipped_formula(module64, x.double())
    with ops.use_backend("triton"):
        assert not module.folds_out_proj(x)  # gradients are recorded here
        with torch.no_grad():
            assert module.folds_out_proj(x)
            out = module(x)
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                out16 = module(x)
    assert_close("out", out, ref, torch.float32)
    assert rel_err(out16, out) > 1e-4  # bf16 really ran
    assert_close("out bf16", out16, ref, torch.bfloat16)
    with ops.use_backend("torch"), torch.no_grad():
        assert not module.folds_out_proj(x)
