"""The PyTorch selective scan (the CPU path) vs the float64 step recurrence."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bsmamba2 import ops
from bsmamba2.ops.reference import selective as reference
from tests.helpers.numerics import rel_err as _rel

OPTIONAL = ("D", "z", "delta_bias", "initial_state")


def _inputs(b=2, d=6, length=50, n=4, g=2, decay=1.0, dtype=torch.float32, channel_last=False):
    """Fresh random inputs; channel_last: u, delta, z are (b, d, L) views of one (b, L, 3d)
    tensor and B, C of one (b, L, 2gn) tensor, as the model hands them in."""
    if channel_last:
        u, delta, z = (t.transpose(1, 2) for t in torch.randn(b, length, 3 * d, dtype=dtype).split(d, -1))
        B, C = (t.unflatten(-1, (g, n)).permute(0, 2, 3, 1)
                for t in torch.randn(b, length, 2 * g * n, dtype=dtype).split(g * n, -1))
    else:
        u, delta, z = (torch.randn(b, d, length, dtype=dtype) for _ in range(3))
        B, C = (torch.randn(b, g, n, length, dtype=dtype) for _ in range(2))
    return dict(u=u, delta=delta * 0.5 - 1, A=-(torch.rand(d, n) * 4 + 0.5) * decay, B=B, C=C,
                D=torch.randn(d), z=z, delta_bias=torch.randn(d) * 0.5, initial_state=torch.randn(b, d, n))


def _run(fn, ins, **kw):
    return fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins.get("D"), ins.get("z"),
              ins.get("delta_bias"), True, initial_state=ins.get("initial_state"), **kw)


def _check_with_gradients(ins, block=None, tol=(1e-5, 1e-4)):
    """Output, final state and every input gradient (autograd through the scan) vs the oracle."""
    ins = {k: v.requires_grad_() for k, v in ins.items()}
    y_true, f_true = _run(reference.selective_scan_sequential, ins)
    gy, gf = torch.randn_like(y_true), torch.randn_like(f_true)
    y, f = _run(reference.selective_scan, ins, return_final_state=True, block=block)
    got = torch.autograd.grad((y.double() * gy).sum() + (f.double() * gf).sum(), list(ins.values()))
    want = torch.autograd.grad((y_true * gy).sum() + (f_true * gf).sum(), list(ins.values()))
    assert y.dtype == ins["u"].dtype and f.dtype == torch.float32
    assert _rel(y, y_true) < tol[0] and _rel(f, f_true) < tol[0]
    for name, a, w in zip(ins, got, want, strict=True):
        assert _rel(a, w) < tol[1], name


@pytest.mark.parametrize("length", [1, 7, 62, 63, 256, 801])
def test_outputs_and_gradients(length):
    _check_with_gradients(_inputs(length=length, channel_last=True))


@pytest.mark.parametrize("block", [(1, 1), (2, 3), (1, 16)])
def test_tiles_of_any_shape_give_the_same_scan(block):
    """Tiles that split the sequences and the steps unevenly (3 sequences, 63 steps)."""
    _check_with_gradients(_inputs(b=3, length=63), block=block)


@pytest.mark.parametrize("drop", OPTIONAL)
def test_each_optional_input_can_be_left_out(drop):
    ins = _inputs(length=33, channel_last=True)
    del ins[drop]
    _check_with_gradients(ins, block=(1, 4))


def test_bfloat16_inputs():
    """bf16 u/Δ/z/B/C (as under autocast): fp32 arithmetic inside, a bf16 output."""
    ins = _inputs(length=40, dtype=torch.bfloat16, channel_last=True)
    _check_with_gradients(ins, tol=(1e-2, 2e-2))
    with torch.inference_mode():
        y = _run(reference.selective_scan, ins)
    assert y.dtype == torch.bfloat16
    assert _rel(y, _run(reference.selective_scan_sequential, ins)[0]) < 1e-2


@pytest.mark.parametrize("block", [(1, 1), (2, 4), None])
def test_inference_path_in_place_is_exact_and_leaves_inputs(block):
    """Without autograd the tiles write into reused buffers; the inputs stay."""
    ins = _inputs(b=3, d=8, length=90, n=16, g=1, channel_last=True)
    ins["B"], ins["C"] = ins["B"][:, 0], ins["C"][:, 0]  # the (batch, n, length) form
    before = {k: v.clone() for k, v in ins.items()}
    y_true, f_true = _run(reference.selective_scan_sequential, ins)
    with torch.inference_mode():
        y, f = _run(reference.selective_scan, ins, return_last_state=True, block=block)
    assert _rel(y, y_true) < 1e-5 and _rel(f, f_true) < 1e-5
    for k, v in ins.items():
        assert torch.equal(v, before[k]), k


def test_scans_in_several_threads_at_once():
    """Tiles split over 2 threads while other threads scan too (a server's jobs): every
    result exact, torch's thread count as before."""
    cases = [_inputs(b=4, d=8, length=30, n=4, g=1) for _ in range(4)]
    wants = [_run(reference.selective_scan_sequential, ins)[0] for ins in cases]

    def scan(ins):
        with torch.inference_mode():
            return _run(reference.selective_scan, ins, block=(1, 4))

    real = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(4) as pool:
            gots = list(pool.map(scan, cases))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(real)
    for got, want in zip(gots, wants, strict=True):
        assert _rel(got, want) < 1e-5


def test_strong_decay_stays_finite():
    """Decays of thousands of e-folds over a 64-step tile: a log-space form (e^{−ΣΔA} inside
    a tile) would overflow; the step recurrence only underflows to zero."""
    ins = {k: v.requires_grad_() for k, v in _inputs(length=64, decay=40.0).items()}
    S = torch.nn.functional.softplus(ins["delta"] + ins["delta_bias"][:, None]).sum(-1)[..., None] * ins["A"]
    assert torch.isinf(torch.exp(-S)).any()  # what a log-space tile would compute
    y_true, _ = _run(reference.selective_scan_sequential, ins)
    y = _run(reference.selective_scan, ins, block=(2, 64))
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
