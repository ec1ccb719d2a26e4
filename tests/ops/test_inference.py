"""The reference ops take an in-place path when autograd records nothing (inference): it
must give what the autograd path gives, and both the float64 truth, for every dtype."""

from __future__ import annotations

import os

import pytest
import torch

from bsmamba2.model import BSMamba2, stft
from bsmamba2.ops.reference import causal_conv1d, gated_rms_norm, ssd_scan, ssd_scan_sequential
from tests.helpers.configs import TINY
from tests.helpers.numerics import rel_err
from tests.helpers.ops import F64, conv_truth, norm_truth, ssd_inputs

MODES = ["autograd", "no_grad", "inference_mode"]


def run(mode: str, fn, *args, **kwargs):
    """``fn`` with grad-requiring inputs (autograd path), under no_grad, or in inference mode."""
    if mode == "autograd":
        args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args]
        kwargs = {k: v.detach().requires_grad_() if isinstance(v, torch.Tensor) else v
                  for k, v in kwargs.items()}
        out = fn(*args, **kwargs)
        assert (out[0] if isinstance(out, tuple) else out).requires_grad
        return out
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        return fn(*args, **kwargs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length,chunk,g", [(1, 64, 1), (63, 16, 1), (130, 64, 2), (200, 64, 1)])
def test_ssd_scan_paths_match_float64_truth(mode, length, chunk, g):
    t = ssd_inputs(2, length, 4, 8, 6, g)
    args = [t[k] for k in ("x", "dt", "A", "B", "C", "D")]
    kw = {"dt_bias": t["dt_bias"], "initial_state": t["initial_state"]}
    y, state = run(mode, ssd_scan, *args, dt_softplus=True, return_final_state=True, chunk_size=chunk, **kw)
    y_ref, state_ref = ssd_scan_sequential(*args, dt_softplus=True, **kw)
    assert rel_err(y.detach(), y_ref) <= 1e-10 and rel_err(state.detach(), state_ref) <= 1e-10
    y_plain = run(mode, ssd_scan, *args[:5], dt_softplus=True, chunk_size=chunk)  # no D, no state
    assert rel_err(y_plain.detach(), ssd_scan_sequential(*args[:5], dt_softplus=True)[0]) <= 1e-10


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_ssd_scan_paths_low_precision(mode, dtype, tol):
    t = {k: v.to(dtype) for k, v in ssd_inputs(2, 150, 4, 8, 16, 1).items()}
    args = [t[k] for k in ("x", "dt", "A", "B", "C", "D")]
    y = run(mode, ssd_scan, *args, dt_bias=t["dt_bias"], dt_softplus=True)
    assert y.dtype == dtype
    ref, _ = ssd_scan_sequential(*args, dt_bias=t["dt_bias"], dt_softplus=True)
    assert rel_err(y.detach(), ref) <= tol


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_causal_conv1d_paths(mode, dtype, tol, with_bias):
    x = torch.randn(2, 40, 6, dtype=F64)
    w, b = torch.randn(6, 4, dtype=F64), torch.randn(6, dtype=F64)
    bias = b.to(dtype) if with_bias else None
    y = run(mode, causal_conv1d, x.to(dtype), w.to(dtype), bias, "silu")
    assert y.dtype == dtype
    truth = conv_truth(x.to(dtype), w.to(dtype), bias, "silu")
    assert rel_err(y.detach(), truth) <= tol


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-13), (torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("gated,group_size", [(True, None), (True, 4), (False, None), (False, 8)])
def test_gated_rms_norm_paths(mode, dtype, tol, gated, group_size):
    x = torch.randn(3, 7, 16, dtype=F64).to(dtype)
    z = torch.randn(3, 7, 16, dtype=F64).to(dtype) if gated else None
    w = (torch.rand(16, dtype=F64) + 0.5).to(dtype)
    y = run(mode, gated_rms_norm, x, z, w, 1e-5, group_size)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y.detach(), norm_truth(x, z, w, 1e-5, group_size)) <= tol


def test_inference_leaves_inputs_untouched():
    t = ssd_inputs(2, 70, 4, 8, 6, 1, dtype=torch.float32)
    before = {k: v.clone() for k, v in t.items()}
    with torch.inference_mode():
        ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], dt_bias=t["dt_bias"], dt_softplus=True,
                 initial_state=t["initial_state"], chunk_size=16)
        causal_conv1d(t["x"].flatten(2), torch.randn(32, 4), torch.randn(32), "silu")
        gated_rms_norm(t["x"], t["x"] * 0.5, torch.rand(8), 1e-5, 4)
    assert all(torch.equal(t[k], before[k]) for k in t)


def test_model_inference_equals_training_path():
    """The whole network: inference mode (in place) against the autograd path, float32."""
    torch.manual_seed(0)
    cfg = TINY
    model = BSMamba2(cfg)
    spec = stft(torch.randn(1, 2, 44100 // 4) * 0.1, cfg)
    train = model(spec)
    assert train.requires_grad
    with torch.inference_mode():
        infer = model(spec)
    assert rel_err(torch.view_as_real(infer), torch.view_as_real(train.detach())) <= 1e-6


def test_ssd_scan_under_autocast_paths_agree():
    """Under CPU bf16 autocast the products run in bf16 on both paths (the in-place one writes
    their operands in bf16 directly): the same roundings, so the same result."""
    t = {k: v.float() for k, v in ssd_inputs(2, 150, 4, 8, 16, 1).items()}
    args = [t[k] for k in ("x", "dt", "A", "B", "C", "D")]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        train = run("autograd", ssd_scan, *args, dt_bias=t["dt_bias"], dt_softplus=True)
        infer = run("inference_mode", ssd_scan, *args, dt_bias=t["dt_bias"], dt_softplus=True)
    assert rel_err(infer, train.detach()) <= 1e-5
    ref, _ = ssd_scan_sequential(*args, dt_bias=t["dt_bias"], dt_softplus=True)
    assert rel_err(infer, ref) <= 2e-2


def compiled_ssd_scan(backend, graphs: list | None = None):
    """ssd_scan through torch.compile (one graph), recording the traced graphs when asked."""
    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(ssd_scan, backend=recording if graphs is not None else backend, fullgraph=True)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("length,chunk,g,with_state", [(130, 64, 2, True), (200, 32, 1, False), (63, 16, 1, True)])
def test_compiled_ssd_scan_in_inference_matches_float64_truth(backend, mode, length, chunk, g, with_state):
    """Compiled inference passes the states between chunks in one opaque op
    (``bsmamba2::ssd_pass_states``): the float64 truth, with and without an initial state."""
    if backend == "inductor" and os.environ.get("BSMAMBA2_TEST_INDUCTOR") != "1":
        pytest.skip("builds C++ (~1 minute on 2 cores); set BSMAMBA2_TEST_INDUCTOR=1")
    t = ssd_inputs(2, length, 4, 8, 6, g)
    args = [t[k] for k in ("x", "dt", "A", "B", "C", "D")]
    kw = {"dt_bias": t["dt_bias"], "initial_state": t["initial_state"] if with_state else None}
    y, state = run(mode, compiled_ssd_scan(backend), *args, dt_softplus=True, return_final_state=True,
                   chunk_size=chunk, **kw)
    y_ref, state_ref = ssd_scan_sequential(*args, dt_softplus=True, **kw)
    assert rel_err(y, y_ref) <= 1e-10 and rel_err(state, state_ref) <= 1e-10


def test_compiled_ssd_scan_under_autocast_equals_eager():
    """Under CPU bf16 autocast the opaque op casts its products' operands as autocast would
    (explicitly): the compiled inference gives the eager inference's roundings."""
    t = {k: v.float() for k, v in ssd_inputs(2, 300, 4, 8, 16, 1).items()}
    args = [t[k] for k in ("x", "dt", "A", "B", "C", "D")]
    kw = {"dt_bias": t["dt_bias"], "dt_softplus": True, "initial_state": t["initial_state"],
          "return_final_state": True}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = run("inference_mode", ssd_scan, *args, **kw)
        compiled = run("inference_mode", compiled_ssd_scan("aot_eager"), *args, **kw)
    for got, want in zip(compiled, eager, strict=True):
        assert got.dtype == want.dtype and rel_err(got, want) <= 1e-6


def test_compiled_inference_graph_does_not_grow_with_the_chunks():
    """Unrolled, the loop over chunks put every chunk's slices in the graph (and each became a
    C++ kernel of its own under inductor); as one op, 3 and 13 chunks trace the same graph."""
    sizes = []
    for length in (130, 801):
        t = ssd_inputs(1, length, 4, 8, 6, 1, dtype=torch.float32)
        graphs: list = []
        with torch.inference_mode():
            compiled_ssd_scan(None, graphs)(*(t[k] for k in ("x", "dt", "A", "B", "C", "D")), dt_softplus=True)
        (graph,) = graphs
        calls = [n for n in graph.graph.nodes if n.target is torch.ops.bsmamba2.ssd_pass_states.default
                 or n.target is torch.ops.bsmamba2.ssd_pass_states]
        assert len(calls) == 1
        sizes.append(len(graph.graph.nodes))
    assert sizes[0] == sizes[1]


def test_pass_states_op_registration():
    """Schema, fake (meta) implementation and the declared mutation of ``y`` agree with the
    op's eager behaviour (torch.library.opcheck)."""
    b, g, hg, nc, q, p, n = 2, 2, 2, 3, 5, 4, 6
    args = (torch.randn(b, g, hg, nc, q, p), torch.randn(b, nc, q, g, hg * p), torch.rand(b, nc, g, hg, 1, 1),
            torch.rand(b, g, hg, nc, q, 1), torch.randn(b, g, nc, q, n), torch.randn(b, g, nc, q, n),
            torch.randn(b, g, hg * p, n), torch.float32)
    torch.library.opcheck(torch.ops.bsmamba2.ssd_pass_states, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
