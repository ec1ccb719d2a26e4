"""The PyTorch selective scan (the CPU path) vs the float64 step recurrence."""

from __future__ import annotations

import pytest
import torch

from bsmamba2 import ops
from bsmamba2.ops.reference import selective as reference
from tests.helpers.numerics import rel_err as _rel


def _inputs(b=2, d=6, length=50, n=4, g=2, decay=1.0, dtype=torch.float32):
    u, delta, z = (torch.randn(b, d, length, dtype=dtype) for _ in range(3))
    B, C = (torch.randn(b, g, n, length, dtype=dtype) for _ in range(2))
    return dict(u=u, delta=delta * 0.5 - 1, A=-(torch.rand(d, n) * 4 + 0.5) * decay, B=B, C=C,
                D=torch.randn(d), z=z, delta_bias=torch.randn(d) * 0.5, initial_state=torch.randn(b, d, n))


def _run(fn, ins, **kw):
    return fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["z"], ins["delta_bias"],
              True, initial_state=ins["initial_state"], **kw)


@pytest.mark.parametrize("chunk", [1, 4, None])
@pytest.mark.parametrize("length", [1, 7, 63, 200])
def test_outputs_and_gradients(length, chunk):
    ins = {k: v.requires_grad_() for k, v in _inputs(length=length).items()}
    y_true, f_true = _run(reference.selective_scan_sequential, ins)
    gy, gf = torch.randn_like(y_true), torch.randn_like(f_true)
    y, f = _run(reference.selective_scan, ins, return_final_state=True, chunk=chunk)
    got = torch.autograd.grad((y.double() * gy).sum() + (f.double() * gf).sum(), list(ins.values()))
    want = torch.autograd.grad((y_true * gy).sum() + (f_true * gf).sum(), list(ins.values()))
    assert y.dtype == torch.float32 and f.dtype == torch.float32
    assert _rel(y, y_true) < 1e-5 and _rel(f, f_true) < 1e-5
    for name, a, w in zip(ins, got, want, strict=True):
        assert _rel(a, w) < 1e-4, name


@pytest.mark.parametrize("chunk", [1, 64])
def test_inference_path_in_place_is_exact_and_leaves_inputs(chunk):
    """Without autograd the per-step path updates its buffers in place; the inputs stay."""
    ins = _inputs(b=3, d=8, length=90, n=16, g=1)
    ins["B"], ins["C"] = ins["B"][:, 0], ins["C"][:, 0]  # the (batch, n, length) form
    before = {k: v.clone() for k, v in ins.items()}
    y_true, f_true = _run(reference.selective_scan_sequential, ins)
    with torch.inference_mode():
        y, f = _run(reference.selective_scan, ins, return_last_state=True, chunk=chunk)
    assert _rel(y, y_true) < 1e-5 and _rel(f, f_true) < 1e-5
    for k, v in ins.items():
        assert torch.equal(v, before[k]), k


def test_strong_decay_halves_chunks_and_stays_finite():
    """A decay of hundreds of e-folds per chunk would overflow e^{−S}; the chunks split."""
    ins = {k: v.requires_grad_() for k, v in _inputs(length=64, decay=40.0).items()}
    y_true, _ = _run(reference.selective_scan_sequential, ins)
    y = _run(reference.selective_scan, ins, chunk=64)
    assert torch.isfinite(y).all() and _rel(y, y_true) < 1e-5
    (du,) = torch.autograd.grad(y.sum(), [ins["u"]])
    (du_true,) = torch.autograd.grad(y_true.sum(), [ins["u"]])
    assert torch.isfinite(du).all() and _rel(du, du_true) < 1e-4


def test_float64_stays_float64():
    ins = _inputs(length=30, dtype=torch.float64)
    y, f = _run(reference.selective_scan, ins, return_last_state=True)
    y_true, f_true = _run(reference.selective_scan_sequential, ins)
    assert y.dtype == f.dtype == torch.float64
    assert _rel(y, y_true) < 1e-12 and _rel(f, f_true) < 1e-12


def test_public_op_takes_selective_scan_fn_arguments(monkeypatch):
    """Positional order and defaults of mamba_ssm's selective_scan_fn (no softplus unless
    asked, return_last_state); on a CPU the dispatch serves it with the reference."""
    monkeypatch.setenv("BSMAMBA2_KERNELS", "auto")
    ins = _inputs(length=20)
    args = [ins[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    out, last = ops.selective_scan(*args, True, True)
    want, want_last = reference.selective_scan_sequential(*args, True)
    assert _rel(out, want) < 1e-5 and _rel(last, want_last) < 1e-5
    args[1] = args[1].abs() * 0.2  # a raw Δ (no softplus) must be positive
    plain = ops.selective_scan(*args[:5])
    assert _rel(plain, reference.selective_scan_sequential(*args[:5])[0]) < 1e-5


def test_bad_groups_raise():
    ins = _inputs(d=5, g=2, length=8)
    with pytest.raises(ValueError, match="multiple of the groups"):
        reference.selective_scan(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"])
