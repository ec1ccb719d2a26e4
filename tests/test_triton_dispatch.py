"""The dispatch point with the Triton backend, and the kernels inside the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from triton_testing import DEVICE, ON_GPU, assert_close, rel_err

import bsmamba2
from bsmamba2 import ops
from bsmamba2.model import BSMamba2Config
from bsmamba2.model.blocks import BidirectionalMamba
from bsmamba2.ops import dispatch


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("BSMAMBA2_KERNELS", "auto")
    assert ops.active_backend("cpu") == "torch"
    assert ops.active_backend("cuda") == "triton"  # no CUDA call: just the rule
    assert ops.active_backend("cuda", torch.float64) == "torch"
    monkeypatch.setenv("BSMAMBA2_KERNELS", "torch")
    assert ops.active_backend("cuda") == "torch"
    monkeypatch.setenv("BSMAMBA2_KERNELS", "cuda-please")
    with pytest.raises(dispatch.KernelBackendError, match="expected one of"):
        ops.requested_backend()


def test_triton_never_falls_back_silently(monkeypatch):
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dispatch.KernelBackendError, match="needs CUDA tensors"):
        ops.ssd_scan(torch.randn(1, 4, 1, 16), torch.randn(1, 4, 1), -torch.ones(1),
                     torch.randn(1, 4, 1, 16), torch.randn(1, 4, 1, 16))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(dispatch.KernelBackendError, match="float64"):
        ops.active_backend("cpu", torch.float64)
    assert ops.active_backend("cpu", torch.float32) == "triton"


def test_ops_route_to_the_kernels(monkeypatch):
    from bsmamba2.ops import triton as kernels

    calls = []
    for name in ("ssd_scan", "causal_conv1d", "gated_rms_norm"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    block = _block().to(DEVICE)
    block(torch.randn(2, 9, 16, device=DEVICE))
    assert set(calls) == {"ssd_scan", "causal_conv1d", "gated_rms_norm"}


def _block() -> BidirectionalMamba:
    cfg = BSMamba2Config(dim=16, depth=1, expand=2, headdim=16, d_state=8)
    torch.manual_seed(7)
    block = BidirectionalMamba(cfg)
    with torch.no_grad():  # non-trivial norm weights and D
        for p in block.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return block


@pytest.mark.parametrize("length", [7, 70])
def test_bidirectional_block_matches_reference(monkeypatch, length):
    """A whole bidirectional Mamba-2 block, forward and every parameter gradient."""
    block = _block().to(DEVICE)
    x = torch.randn(3, length, 16, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("BSMAMBA2_KERNELS", backend)
        xi = x.clone().requires_grad_()
        out = block(xi)
        weight = torch.randn(out.shape, generator=torch.Generator(DEVICE).manual_seed(3), device=DEVICE)
        params = [xi, *block.parameters()]
        results[backend] = [out, *torch.autograd.grad((out * weight).sum(), params)]
    for i, (got, want) in enumerate(zip(results["triton"], results["torch"])):
        # Both are fp32 computations: compare with the tf32-level bound of the issue.
        assert rel_err(got, want) < 5e-3 * (1 if ON_GPU else 0.02), f"tensor {i}"


@pytest.mark.skipif(not ON_GPU, reason="the full model in Triton's interpreter takes minutes")
@pytest.mark.parametrize("ema", [False, True])
def test_golden_outputs_with_kernels(monkeypatch, data_dir, expected, ema):
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    model = bsmamba2.load_model(data_dir / "tiny.ckpt", ema=ema, device=DEVICE)
    spec = torch.from_numpy(expected["spec_in"]).to(DEVICE)[None]
    with torch.no_grad():
        out = model(spec)[0].cpu().numpy()
    want = expected["spec_out_ema" if ema else "spec_out"].reshape(out.shape)
    err = np.linalg.norm(out - want) / np.linalg.norm(want)
    assert err < 5e-3, err  # tf32 dots in the scan; the reference path lands far below


def test_assert_close_catches_unwritten_outputs():
    """The checks the kernel tests rely on fail on NaN and on a wrong value."""
    truth = torch.randn(4, 4)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close("t", torch.full_like(truth, float("nan")), truth, torch.float32)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close("t", truth * 1.01, truth, torch.float32)
