"""The PyTorch reference ops against float64 truths: the sequential recurrence, F.conv1d, formulas."""

from __future__ import annotations

import pytest
import torch

from bsmamba2 import ops
from bsmamba2.ops.reference import causal_conv1d, gated_rms_norm, ssd_scan, ssd_scan_sequential
from tests.helpers.numerics import rel_err
from tests.helpers.ops import F64, conv_truth, norm_truth, ssd_inputs

SHAPES = [(2, 2, 4, 3, 1), (1, 4, 8, 16, 2), (3, 3, 2, 5, 3)]  # (b, h, p, n, g)


@pytest.mark.parametrize("length", [1, 61, 62, 63, 255, 256, 257, 801])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_extras", [False, True])
def test_ssd_matches_sequential_float64(length, shape, with_extras):
    b, h, p, n, g = shape
    t = ssd_inputs(b, length, h, p, n, g)
    kw = {"dt_softplus": True}
    D = None
    if with_extras:
        D = t["D"]
        kw.update(dt_bias=t["dt_bias"], initial_state=t["initial_state"])
    y, state = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D, return_final_state=True, **kw)
    y_ref, state_ref = ssd_scan_sequential(t["x"], t["dt"], t["A"], t["B"], t["C"], D, **kw)
    assert y.dtype == F64 and y.shape == (b, length, h, p)
    assert rel_err(y, y_ref) <= 1e-10
    assert rel_err(state, state_ref) <= 1e-10
    assert torch.equal(ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D, **kw), y)


def test_ssd_without_softplus_and_chunk_size_independent():
    t = ssd_inputs(2, 100, 2, 3, 4, 1)
    dt = torch.nn.functional.softplus(t["dt"])  # positive Δ given directly
    y_ref, _ = ssd_scan_sequential(t["x"], dt, t["A"], t["B"], t["C"], t["D"])
    for chunk in (1, 7, 16, 64, 128):
        y = ssd_scan(t["x"], dt, t["A"], t["B"], t["C"], t["D"], chunk_size=chunk)
        assert rel_err(y, y_ref) <= 1e-10, chunk


def test_ssd_state_carries_across_calls():
    """Scanning two halves with the first's final state equals one scan of the whole."""
    t = ssd_inputs(2, 150, 2, 4, 3, 1)
    args = (t["A"],)
    full, full_state = ssd_scan(t["x"], t["dt"], *args, t["B"], t["C"], return_final_state=True)
    half = 70
    y1, s1 = ssd_scan(t["x"][:, :half], t["dt"][:, :half], *args, t["B"][:, :half], t["C"][:, :half],
                      return_final_state=True)
    y2, s2 = ssd_scan(t["x"][:, half:], t["dt"][:, half:], *args, t["B"][:, half:], t["C"][:, half:],
                      initial_state=s1, return_final_state=True)
    assert rel_err(torch.cat([y1, y2], 1), full) <= 1e-12
    assert rel_err(s2, full_state) <= 1e-12


@pytest.mark.parametrize("length,chunk,g", [(1, 4, 1), (7, 4, 2), (9, 16, 1)])
def test_ssd_gradcheck(length, chunk, g):
    t = ssd_inputs(2, length, 2, 2, 3, g, requires_grad=True)

    def f(x, dt, A, B, C, D, dt_bias, init):
        return ssd_scan(x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True, initial_state=init,
                        return_final_state=True, chunk_size=chunk)

    names = ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"]
    assert torch.autograd.gradcheck(f, tuple(t[k] for k in names), fast_mode=True)


def test_ssd_gradients_match_sequential_at_real_length():
    t = ssd_inputs(1, 130, 2, 4, 5, 1, requires_grad=True)
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state"]
    w = torch.randn(1, 130, 2, 4, dtype=F64)
    grads = []
    for fn in (ssd_scan, ssd_scan_sequential):
        out = fn(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], dt_bias=t["dt_bias"], dt_softplus=True,
                 initial_state=t["initial_state"])
        y = out[0] if isinstance(out, tuple) else out
        grads.append(torch.autograd.grad((y * w).sum(), [t[k] for k in names]))
    for name, g1, g2 in zip(names, *grads, strict=True):
        assert rel_err(g1, g2) <= 1e-10, name


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_ssd_low_precision_inputs(dtype, tol):
    t64 = ssd_inputs(2, 257, 4, 8, 16, 1)
    t = {k: v.to(dtype) for k, v in t64.items()}
    y = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
    assert y.dtype == dtype
    # Truth on the same (rounded) inputs, so only the arithmetic is judged.
    ref, _ = ssd_scan_sequential(*(t[k] for k in ("x", "dt", "A", "B", "C", "D")), dt_bias=t["dt_bias"],
                                 dt_softplus=True)
    assert rel_err(y, ref) <= tol


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("length", [1, 3, 62, 257])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_matches_conv1d(width, length, activation):
    x = torch.randn(2, length, 6, dtype=F64)
    w = torch.randn(6, width, dtype=F64)
    b = torch.randn(6, dtype=F64)
    y = causal_conv1d(x, w, b, activation)
    assert rel_err(y, conv_truth(x, w, b, activation)) <= 1e-12
    assert rel_err(causal_conv1d(x, w, None, activation), conv_truth(x, w, None, activation)) <= 1e-12


def test_causal_conv1d_is_causal_and_float32():
    x = torch.randn(1, 50, 4)
    w, b = torch.randn(4, 4), torch.randn(4)
    y = causal_conv1d(x, w, b, "silu")
    x2 = x.clone()
    x2[:, 30:] += 1.0
    y2 = causal_conv1d(x2, w, b, "silu")
    assert torch.equal(y[:, :30], y2[:, :30]) and not torch.equal(y[:, 30:], y2[:, 30:])
    assert y.dtype == torch.float32
    assert rel_err(y, conv_truth(x, w, b, "silu")) <= 1e-6
    with pytest.raises(ValueError):
        causal_conv1d(x, w, b, "relu")


def test_causal_conv1d_gradcheck():
    x = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    w = torch.randn(3, 4, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: causal_conv1d(*a, "silu"), (x, w, b))


@pytest.mark.parametrize("group_size", [None, 4, 16])
@pytest.mark.parametrize("gated", [True, False])
def test_gated_rms_norm(group_size, gated):
    x = torch.randn(3, 7, 16, dtype=F64)
    z = torch.randn(3, 7, 16, dtype=F64) if gated else None
    w = torch.rand(16, dtype=F64) + 0.5
    assert rel_err(gated_rms_norm(x, z, w, 1e-5, group_size), norm_truth(x, z, w, 1e-5, group_size)) <= 1e-13
    y32 = gated_rms_norm(x.float(), None if z is None else z.float(), w.float(), 1e-5, group_size)
    assert y32.dtype == torch.float32
    assert rel_err(y32, norm_truth(x, z, w, 1e-5, group_size)) <= 1e-6


def test_gated_rms_norm_gradcheck():
    x = torch.randn(2, 3, 8, dtype=F64, requires_grad=True)
    z = torch.randn(2, 3, 8, dtype=F64, requires_grad=True)
    w = torch.randn(8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: gated_rms_norm(*a, 1e-5, 4), (x, z, w))


def test_dispatch_torch_backend_is_the_reference():
    t = ssd_inputs(1, 20, 2, 2, 3, 1)
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"])
    with ops.use_backend("torch"):
        assert ops.active_backend("cpu") == "torch"
        assert torch.equal(ops.ssd_scan(*args, dt_softplus=True), ssd_scan(*args, dt_softplus=True))
