"""Triton Mamba-3 scan vs the float64 step oracle: outputs and every input gradient, SISO and
MIMO, on fresh random inputs and on the official layer's recorded scan call.

On a CPU the kernels run in Triton's interpreter at small sizes; on a GPU at the paper's
sizes (16 heads × 64, state 128) and the lengths of both BSMamba2 axes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.kernels import DEVICE, ON_GPU, TOL, assert_close, poisoned_outputs
from tests.helpers.mamba3 import cast, fixture_op, grads, random_inputs, run
from tests.helpers.memory import LiveTensors
from tests.helpers.numerics import rel_err

from bsmamba2 import ops  # isort: skip (after tests.helpers.kernels, which sets TRITON_INTERPRET)
from bsmamba2.ops.reference import mamba3 as ref
from bsmamba2.ops.triton import mamba3 as kernels
from bsmamba2.ops.triton import mamba3_angles

ROOT = Path(__file__).resolve().parents[2]

# (batch, heads, headdim, state): small for the interpreter, the paper's on a GPU.
SHAPE = (2, 16, 64, 128) if ON_GPU else (1, 2, 16, 16)
# (length, rank, groups, z, mimo_o): every path of the kernels at least once on a CPU.
CASES = (
    # one compile per (rank, one chunk or several, z, mimo_o): the lengths of both axes, 1, and 65
    [(1, 1, 1, True, True), (62, 1, 1, True, True), (64, 1, 1, True, True), (65, 1, 1, True, True),
     (801, 1, 1, True, True), (62, 4, 1, True, True), (63, 4, 1, True, True), (801, 4, 1, True, True),
     (801, 4, 1, True, False), (65, 2, 2, False, True), (801, 2, 2, False, True)]
    if ON_GPU
    else [(1, 1, 1, True, True), (65, 1, 2, False, True), (7, 2, 1, True, True), (63, 4, 1, True, True),
          (33, 2, 1, True, False), (9, 2, 2, False, True)]
)


def reversed_scan(fn):
    """fn on the flipped sequences, its output flipped back: what ``reverse=True`` must equal."""
    def scan(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D=None, z=None, **kw):
        flip = [None if x is None else x.flip(1) for x in (q, k, v, angles, z)]
        return fn(*flip[:3], adt.flip(2), dt.flip(2), trap.flip(2), q_bias, k_bias, flip[3], D, flip[4],
                  **kw).flip(1)
    return scan


def _check(length, rank, groups, with_z, with_o, dtype, slack=0.0, shape=SHAPE, angles=None, reverse=False):
    b, h, p, n = shape
    args, weights = random_inputs(b, length, h, p, n, rank, dtype=torch.float64, g=groups, with_z=with_z,
                                  device=DEVICE, angles=angles)
    if rank > 1 and not with_o:
        weights["mimo_o"] = None
    # the kernel's inputs (D and the MIMO weights fp32, the rest in dtype); the truth is the
    # float64 oracle on exactly these values, so the tolerance measures the kernel alone
    low = {k: None if v is None else v.float() if k == "D" else v.to(dtype) for k, v in args.items()}
    low_weights = cast(weights, torch.float32)
    shape = (b, length, h, p) if with_o or rank == 1 else (b, length, rank, h, p)
    w_out = torch.randn(shape, dtype=torch.float64, device=DEVICE).to(dtype)
    oracle = reversed_scan(ref.mamba3_scan_sequential) if reverse else ref.mamba3_scan_sequential
    want, want_g = grads(oracle, cast(low, torch.float64), cast(low_weights, torch.float64), w_out.double())
    with poisoned_outputs():
        got, got_g = grads(kernels.mamba3_scan, low, low_weights, w_out, reverse=reverse)
    assert got.dtype == dtype
    assert_close("out", got, want, dtype, slack)
    assert set(got_g) == set(want_g)
    for name, g in want_g.items():
        if name == "Angles" and length == 1:  # zero in exact arithmetic: one step's q, k turn alike
            assert got_g[name].abs().max() <= TOL[dtype] * got_g["Q"].abs().max()
            continue
        assert_close(f"d{name}", got_g[name], g, dtype, slack)


@pytest.mark.parametrize(("length", "rank", "groups", "with_z", "with_o"), CASES)
def test_fp32(length, rank, groups, with_z, with_o):
    _check(length, rank, groups, with_z, with_o, torch.float32)


@pytest.mark.parametrize(("length", "rank"), [(801, 1), (62, 4)] if ON_GPU else [(65, 1), (9, 2)])
def test_reverse_with_gradients(length, rank):
    """``reverse`` with a backward ahead (flipped copies around the kernels): outputs and every
    gradient against the float64 oracle on the flipped sequences."""
    _check(length, rank, 1, True, True, torch.float32, reverse=True)


# (length, rank, groups, z, mimo_o, dtype) of the output pass alone
INFERENCE_CASES = (
    [(1, 1, 1, True, True, torch.float32), (62, 1, 1, True, True, torch.bfloat16),
     (801, 1, 1, True, True, torch.bfloat16), (801, 1, 1, True, True, torch.float32),
     (62, 4, 1, True, True, torch.bfloat16), (801, 4, 1, True, False, torch.bfloat16),
     (801, 2, 2, False, True, torch.float32)]
    if ON_GPU
    else [(1, 1, 1, True, True, torch.float32), (65, 1, 2, False, True, torch.float32),
          (33, 2, 1, True, False, torch.float32), (40, 1, 1, True, True, torch.bfloat16)]
)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("length", "rank", "groups", "with_z", "with_o", "dtype"), INFERENCE_CASES)
def test_forward_without_backward(length, rank, groups, with_z, with_o, dtype, reverse):
    """No backward ahead: the output pass alone, with ω and γ made in the kernel from Δ and the
    trapezoid gate read at the layer's strides (A·Δ and Δ (b, l, h) tensors seen as (b, h, l),
    the gate a slice of a wider projection), and with ``reverse`` the steps walked backwards:
    against the float64 oracle (on the flipped sequences)."""
    b, h, p, n = SHAPE
    args, weights = random_inputs(b, length, h, p, n, rank, dtype=torch.float64, g=groups, with_z=with_z,
                                  device=DEVICE)
    if rank > 1 and not with_o:
        weights["mimo_o"] = None
    low = {k: None if v is None else v.float() if k == "D" else v.to(dtype) for k, v in args.items()}
    proj = torch.randn(b, length, h + 3, device=DEVICE, dtype=dtype)
    proj[..., 1:h + 1] = low["Trap"].transpose(1, 2)
    low["Trap"] = proj[..., 1:h + 1].transpose(1, 2)
    low["ADT"], low["DT"] = (low[k].float().transpose(1, 2).contiguous().transpose(1, 2) for k in ("ADT", "DT"))
    low_weights = cast(weights, torch.float32)
    oracle = reversed_scan(ref.mamba3_scan_sequential) if reverse else ref.mamba3_scan_sequential
    want = run(oracle, cast(low, torch.float64), cast(low_weights, torch.float64))
    with poisoned_outputs():
        got = run(kernels.mamba3_scan, low, low_weights, reverse=reverse)
    assert got.dtype == dtype
    assert_close("out", got, want, dtype)


def test_halved_pairs():
    """SISO q, k and biases handed over with their rotation pairs as (j, j + N/2) (the layer's
    in_proj rows make them so): the outputs and gradients of the adjacent pairs, bit for bit,
    with and without a backward."""
    args, _ = random_inputs(1, 40, 2, 16, 32, 1, dtype=torch.float32, device=DEVICE)
    w_out = torch.randn(1, 40, 2, 16, device=DEVICE)
    halved = {**args, **{k: ref.halves_first(args[k]) for k in ("Q", "K", "q_bias", "k_bias")}}
    out, g = grads(kernels.mamba3_scan, args, {}, w_out)
    out_h, g_h = grads(kernels.mamba3_scan, halved, {}, w_out, halved_pairs=True)
    torch.testing.assert_close(out_h, out, rtol=0, atol=0)
    for name, grad in g.items():
        want = ref.halves_first(grad) if name in ("Q", "K", "q_bias", "k_bias") else grad
        torch.testing.assert_close(g_h[name], want, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(run(kernels.mamba3_scan, halved, {}, halved_pairs=True),
                               run(kernels.mamba3_scan, args, {}), rtol=0, atol=0)


@pytest.mark.parametrize(("length", "rank", "angles"), [(40, 1, 24), (21, 2, 32), (40, 1, 16), (21, 2, 9)])
def test_fp32_wider_state(length, rank, angles):
    """d_state 64 (halves of 32 pairs, no masked pairs): some pairs rotated, or all of them,
    over several chunks; with at most 16 angles the forward's tiles are the rotated and the
    unrotated quarters (:func:`kernels.rotation_parts`)."""
    assert kernels.rotation_parts(64, angles)[1] == (angles <= 16)
    _check(length, rank, 1, True, True, torch.float32, shape=(1, 2, 16, 64), angles=angles)


def test_strided_inputs():
    """x and z as slices of one projection output and the angles shared by the heads (a head
    stride 0), as the layer passes them: the forward reads them in place, with the results
    and gradients of contiguous copies."""
    b, length, h, p, n = 1, 40, 2, 16, 64
    args, _ = random_inputs(b, length, h, p, n, 1, dtype=torch.float32, device=DEVICE, angles=16)
    proj = torch.randn(b, length, 2 * h * p + 5, device=DEVICE, requires_grad=True)
    theta = torch.randn(b, length, 1, 16, device=DEVICE, requires_grad=True)
    w_out = torch.randn(b, length, h, p, device=DEVICE)
    results = []
    for copy in (False, True):
        views = {**args, "V": proj[..., :h * p].unflatten(-1, (h, p)),
                 "Z": proj[..., h * p:2 * h * p].unflatten(-1, (h, p)), "Angles": theta.expand(-1, -1, h, -1)}
        if copy:
            views = {k: v.contiguous() for k, v in views.items()}
        out = run(kernels.mamba3_scan, views, {})
        results.append((out, *torch.autograd.grad((out * w_out).sum(), (proj, theta))))
    assert not results[0][0].eq(0).all()
    for name, got, want in zip(("out", "dproj", "dtheta"), *results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(("length", "rank"), [(62, 1), (801, 1), (62, 4), (801, 4)] if ON_GPU else [(65, 1), (9, 2)])
def test_bf16(length, rank):
    """bf16 inputs. The interpreter computes the dots in fp32, but rounds the dq̃/dk̃ products'
    split operands to bf16 as the GPU does: on a CPU these cases check the split's bookkeeping."""
    _check(length, rank, 1, True, True, torch.bfloat16)


@pytest.mark.parametrize("variant", ["siso", "mimo_r2"])
def test_official_scan_call(variant):
    """The recorded kernel call of the official layer, in fp32 (the fixture is float64)."""
    args, weights, t = fixture_op(variant)
    args = {k: None if v is None else v.to(DEVICE) for k, v in cast(args, torch.float32).items()}
    weights = {k: v.to(DEVICE) for k, v in cast(weights, torch.float32).items()}
    out, g = grads(kernels.mamba3_scan, args, weights, t["op_grad.out"].float().to(DEVICE))
    assert_close("out", out, t["op.out"].to(DEVICE), torch.float32)
    for name in ("Q", "K", "V", "ADT", "DT", "Trap", "Angles", "Z"):
        if name in g:
            assert_close(f"d{name}", g[name], t[f"op_grad.{name}"].to(DEVICE), torch.float32)
    assert_close("dD", g["D"], t["grad.D"].to(DEVICE), torch.float32)
    for name in weights:
        assert_close(f"d{name}", g[name], t[f"grad.{name}"].to(DEVICE), torch.float32)


def _rotation_inputs(length, rank, groups, s, n=16):
    """q, k (b, l, r, g, n), biases (h, r, n), φ (b, l, h, s) of a few turns: the kernels' layouts."""
    b, h = 2, 4
    q, k = (torch.randn(b, length, rank, groups, n, dtype=torch.float64, device=DEVICE) for _ in range(2))
    qb, kb = (1 + 0.1 * torch.randn(h, rank, n, dtype=torch.float64, device=DEVICE) for _ in range(2))
    phi = torch.randn(b, length, h, s, dtype=torch.float64, device=DEVICE) * 3
    return q, k, qb, kb, phi


def _rotated64(x, bias, phi):
    """Float64 R(φ)·(x + bias) per head, (b, l, r, h, n), pairs (j, j+N/2)."""
    h = phi.shape[2]
    heads_group = torch.arange(h, device=x.device) // (h // x.shape[3])
    return ref.rotate(x[:, :, :, heads_group] + bias.transpose(0, 1), phi.unsqueeze(2), True)


@pytest.mark.parametrize(("length", "rank", "groups", "s"), [(1, 1, 1, 8), (37, 1, 2, 5), (33, 2, 1, 8), (9, 4, 2, 3)])
def test_rotated_heads(length, rank, groups, s):
    """The backward's per-head rotated q̃, k̃ against float64 rotations (partial blocks, masked
    and unrotated pairs, shared groups): in fp32, and rounded to bf16 with the remainders, which
    bring them back to about 16 bits."""
    q, k, qb, kb, phi = _rotation_inputs(length, rank, groups, s)
    want = [_rotated64(x, bias, phi) for x, bias in ((q, qb), (k, kb))]
    inputs = (q.float(), k.float(), qb.float(), kb.float(), phi.float(), torch.float32)
    with poisoned_outputs():
        *got, q_lo, k_lo = kernels.rotated_heads(*inputs)
    assert q_lo is None and k_lo is None
    for name, g, w in zip("qk", got, want, strict=True):
        assert_close(f"{name} rotated", g, w, torch.float32)
    with poisoned_outputs():
        hi_q, hi_k, lo_q, lo_k = kernels.rotated_heads(*inputs, torch.bfloat16)
    for name, hi, lo, w in zip("qk", (hi_q, hi_k), (lo_q, lo_k), want, strict=True):
        assert torch.equal(hi, hi.bfloat16().float()) and torch.equal(lo, lo.bfloat16().float())
        assert_close(f"{name} rotated, bf16", hi, w, torch.bfloat16)
        assert rel_err(hi + lo, w) <= 2e-5  # lo within 2⁻⁸ of itself: 2⁻¹⁶ of the value (bf16: 3e-3)


# (length, rank, groups, n, s, dtype of q and k): partial blocks, masked pairs (n 16), the paper's
# state (128: 32 rotated pairs, 32 unrotated) at the lengths of every block edge, a narrow rotated
# part beside a wide masked unrotated one (64, 5), and none unrotated (16, 8)
TURN_BACK_CASES = [
    (1, 1, 1, 16, 8, torch.float32), (37, 1, 2, 16, 5, torch.float32), (33, 2, 1, 16, 8, torch.float32),
    (9, 4, 2, 16, 3, torch.float32), (1, 1, 1, 128, 32, torch.float32), (7, 2, 1, 128, 32, torch.float32),
    (62, 4, 1, 128, 32, torch.bfloat16), (63, 1, 2, 128, 32, torch.float32),
    (64, 2, 1, 128, 32, torch.bfloat16), (65, 4, 2, 128, 32, torch.float32),
    (801, 1, 1, 128, 32, torch.bfloat16), (37, 1, 2, 64, 5, torch.float32), (17, 4, 1, 16, 8, torch.bfloat16),
]


TURN_BACK_COMPILE = """
import sys
from tools.triton_spills import MAMBA3_FP32_POINTERS, report
from bsmamba2.ops.triton import mamba3
for n, s, rank in {cases}:
    qr, qu = mamba3.turn_back_parts(n, s)
    constexprs = {{"HG": 2, "T": mamba3.TURN_BACK_ROWS // rank, "R": rank, "N": n, "S": s, "QR": qr,
                  "QU": max(qu, 1), "HAS_U": qu > 0}}
    print(n, s, rank, report(mamba3._turn_back, constexprs, 4, 1, MAMBA3_FP32_POINTERS, "*fp32"))
"""


def test_turn_back_compiles_for_hopper():
    """``_turn_back`` compiled for sm_90 (no GPU needed: Triton's compiler and ptxas) at every
    turn-back case's widths. The interpreter runs what the compiler rejects: once, the unrotated
    pairs' tiles (T·R, QU) and the rotated ones (T·R, QR) as two returns of one function passed
    every CPU test and failed on the GPU wherever QU ≠ QR (n 64, 5 angles)."""
    cases = sorted({(n, s, rank) for _, rank, _, n, s, _ in TURN_BACK_CASES})
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", TURN_BACK_COMPILE.format(cases=cases)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == len(cases) and "registers" in done.stdout, done.stdout


@pytest.mark.parametrize(("length", "rank", "groups", "n", "s", "dtype"), TURN_BACK_CASES)
def test_turned_back(length, rank, groups, n, s, dtype):
    """The turn-back pass is the rotation's vector-Jacobian product: from per-head gradients of
    q̃, k̃, those of q, k (the group's heads summed), φ and the biases, against float64 autograd
    on the kernel's q, k values (bf16 ones too: the layer's). No products: fp32 throughout, so
    the tolerance is fp32's rounding, on a GPU too."""
    q, k, qb, kb, phi = _rotation_inputs(length, rank, groups, s, n)
    q, k = (x.to(dtype).double() for x in (q, k))
    leaves = [x.requires_grad_() for x in (q, k, qb, kb, phi)]
    ddq, ddk = (torch.randn((*q.shape[:3], phi.shape[2], q.shape[-1]), dtype=torch.float64, device=DEVICE)
                for _ in range(2))
    loss = (_rotated64(q, qb, phi) * ddq).sum() + (_rotated64(k, kb, phi) * ddk).sum()
    want = torch.autograd.grad(loss, leaves)
    inputs = (q.detach().to(dtype), k.detach().to(dtype), qb.detach().float(), kb.detach().float(),
              phi.detach().float(), ddq.float(), ddk.float())
    with poisoned_outputs():
        got = kernels.turned_back(*inputs)
    for name, g, w in zip(("dq", "dk", "dphi", "dq_bias", "dk_bias"), got, (want[0], want[1], want[4], want[2],
                                                                          want[3]), strict=True):
        assert g.shape == w.shape and torch.isfinite(g).all(), name
        assert rel_err(g, w) <= 1e-5, f"{name}: relative error {rel_err(g, w):.2e}"


@pytest.mark.parametrize(("n", "s", "parts"), [(128, 32, (32, 32)), (16, 8, (8, 0)), (64, 5, (8, 32)),
                                               (16, 3, (4, 4)), (128, 64, (64, 0)), (256, 1, (1, 128))])
def test_turn_back_parts(n, s, parts):
    """The turn-back tiles: the rotated pairs' width covers s, the unrotated one the rest of n/2."""
    assert kernels.turn_back_parts(n, s) == parts


@pytest.mark.parametrize(("length", "s"), [(1, 8), (7, 3), (62, 8), (63, 5), (64, 8), (65, 8), (130, 6)])
def test_angle_grads(length, s):
    """The one-pass gradient of φ = cumsum(π·tanh(θ)·Δ) (dθ, dΔ) vs float64 autograd through the
    reference, across the walk's blocks and with saturated tanh."""
    b, h = 2, 3
    angles = (torch.randn(b, length, h, s, dtype=torch.float64, device=DEVICE) * 2).float()
    dt = torch.nn.functional.softplus(torch.randn(b, h, length, dtype=torch.float64, device=DEVICE) - 1).float()
    dphi = torch.randn(b, length, h, s, dtype=torch.float64, device=DEVICE)
    leaves64 = [angles.double().requires_grad_(), dt.double().requires_grad_()]
    want_g = torch.autograd.grad(ref.angle_cumsum(*leaves64, torch.float64), leaves64, dphi)
    with poisoned_outputs():
        got_g = mamba3_angles.angle_grads(angles, dt, dphi.float())
    for name, g, t in zip(("dangles", "ddt"), got_g, want_g, strict=True):
        assert g.dtype == torch.float32
        assert_close(name, g, t, torch.float32)


def test_chunk_steps_fit_the_tiles():
    """A power of two ≤ chunk_size, ≤ 64 rows (32 in fp32), ≥ 16 rows (the smallest dot)."""
    assert kernels.chunk_steps(1, torch.bfloat16) == 64 and kernels.chunk_steps(1, torch.float32) == 32
    assert kernels.chunk_steps(4, torch.bfloat16, 64) == 16 and kernels.chunk_steps(2, torch.float32, 48) == 16
    assert kernels.chunk_steps(1, torch.bfloat16, 40) == 32 and kernels.chunk_steps(1, torch.float32, 1) == 16
    assert kernels.chunk_steps(4, torch.bfloat16, 1) == 4


def test_dispatch_serves_the_kernels(monkeypatch):
    args, weights = random_inputs(1, 9, 2, 16, 16, 2, dtype=torch.float32, device=DEVICE)
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    calls, original = [], kernels.mamba3_scan
    monkeypatch.setattr(kernels, "mamba3_scan", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    out = run(ops.mamba3_scan, args, weights)
    assert calls and out.shape == (1, 9, 2, 16)
    assert_close("out", out, run(ref.mamba3_scan_sequential, args, weights), torch.float32)  # tf32 on a GPU
    args, weights = random_inputs(1, 40, 2, 16, 16, 2, dtype=torch.float32, device=DEVICE)
    want = run(ref.mamba3_scan_sequential, args, weights)
    for chunk in (4, 16):  # 16 rows (5 chunks), 32 rows (3 chunks)
        assert_close(f"out, chunk {chunk}", run(ops.mamba3_scan, args, weights, chunk_size=chunk), want,
                     torch.float32)
    assert not kernels.supports(torch.empty(1, 9, 2, 1, 12), torch.empty(1, 9, 2, 16), torch.empty(2, 2, 16))


def test_no_states_kept_by_the_forward():
    """The chunk states are made by the backward, for its call only: a forward that records a
    backward keeps no (b·h, chunk, n, p) states (the training step's memory); its backward
    makes them (so the shape looked for is the right one)."""
    args, weights = random_inputs(1, 40, 2, 16, 32, 2, dtype=torch.float32, device=DEVICE)
    weights = {k: torch.nn.Parameter(v) for k, v in weights.items()}
    states = (2, 3, 32, 16)  # 16-step chunks: rank 2 in fp32; (2 halves × 16 pairs, headdim)
    with LiveTensors() as live:
        out = run(kernels.mamba3_scan, args, weights, chunk_size=16)
    assert out.requires_grad and states not in live.shapes
    with LiveTensors() as live:
        out.sum().backward()
    assert states in live.shapes


def test_auto_serves_the_kernels_where_tested(monkeypatch):
    """``auto`` (here with the backend rule giving Triton, as on CUDA) takes the kernels for
    fp32 and bf16 in the shapes they take, the reference otherwise; ``triton`` says why not."""
    from bsmamba2.ops import dispatch

    monkeypatch.setattr(dispatch, "active_backend", lambda device, dtype: "triton")
    calls, original = [], kernels.mamba3_scan
    monkeypatch.setattr(kernels, "mamba3_scan", lambda *a, **kw: calls.append(a[2].dtype) or original(*a, **kw))
    monkeypatch.setenv("BSMAMBA2_KERNELS", "auto")
    for n, dtype, served in ((16, torch.float32, True), (16, torch.float16, False), (12, torch.float32, False)):
        args, weights = random_inputs(1, 9, 2, 16, n, 1, dtype=dtype, device=DEVICE)
        calls.clear()
        out = run(ops.mamba3_scan, args, weights)
        assert bool(calls) == served and out.dtype == dtype
    monkeypatch.setenv("BSMAMBA2_KERNELS", "triton")
    with pytest.raises(ValueError, match="power-of-two rank"):
        run(ops.mamba3_scan, args, weights)
