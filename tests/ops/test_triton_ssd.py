"""Triton SSD scan vs the float64 sequential recurrence: outputs and every input gradient.

On a CPU the kernels run in Triton's interpreter at small sizes; on a GPU at the paper's
sizes (16 heads × 64, state 128).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import triton

from bsmamba2.ops import reference, split_channels
from bsmamba2.ops.triton import ssd_scan
from tests.helpers.kernels import DEVICE, ON_GPU, assert_close, poisoned_outputs
from tests.helpers.numerics import rel_err

LENGTHS = [1, 7, 62, 63, 256, 257, 801]
# (batch, heads, headdim, groups, state): small for the interpreter, the paper's on a GPU.
SHAPE = (3, 16, 64, 1, 128) if ON_GPU else (2, 2, 16, 1, 16)
SHAPES = (
    [(5, 16, 64, 1, 128), (3, 8, 32, 2, 64), (2, 4, 48, 1, 96)]
    if ON_GPU
    else [(2, 4, 32, 2, 8), (1, 3, 24, 1, 16), (1, 2, 16, 2, 32)]
)


def _inputs(b, length, h, p, g, n, dtype, *, strided=False, decay=1.0):
    """Fresh random inputs; strided: x, B, C are views of one packed tensor (as in the model)."""
    if strided:
        packed = torch.randn(b, length, h * p + 2 * g * n + 5, device=DEVICE, dtype=dtype)
        x, B, C, _ = torch.split(packed, [h * p, g * n, g * n, 5], -1)
        x, B, C = x.reshape(b, length, h, p), B.reshape(b, length, g, n), C.reshape(b, length, g, n)
        x, B, C = (t.detach() for t in (x, B, C))  # leaves that keep the packed strides
    else:
        x = torch.randn(b, length, h, p, device=DEVICE, dtype=dtype)
        B = torch.randn(b, length, g, n, device=DEVICE, dtype=dtype)
        C = torch.randn(b, length, g, n, device=DEVICE, dtype=dtype)
    dt = torch.randn(b, length, h, device=DEVICE, dtype=dtype) * 0.5 - 1.0
    A = -(torch.rand(h, device=DEVICE) * 7 + 1) * decay
    D = torch.randn(h, device=DEVICE)
    dt_bias = torch.randn(h, device=DEVICE) * 0.5 - 2.0
    return [t.requires_grad_() for t in (x, dt, A, B, C, D, dt_bias)]


def _check(b, length, h, p, g, n, dtype, *, with_state=False, strided=False, decay=1.0, baseline=False,
           **kw):
    """Compare outputs and input gradients with the float64 recurrence. baseline: allow each
    gradient the error of the fp32 PyTorch reference (strong decays make dA a sum of large
    cancelling terms, which no fp32 computation resolves to 1e-4). reverse: the kernels walk
    the sequences backwards, against the recurrence run on flipped copies."""
    x, dt, A, B, C, D, dt_bias = _inputs(b, length, h, p, g, n, dtype, strided=strided, decay=decay)
    D_arg = D if kw.get("use_d", True) else None
    bias_arg = dt_bias if kw.get("use_bias", True) else None
    softplus = kw.get("softplus", True)
    if not softplus:  # raw Δ must be positive without softplus
        dt = (dt.detach().abs() * 0.1).requires_grad_()
    h0 = torch.randn(b, h, p, n, device=DEVICE, requires_grad=True) if with_state else None
    named = {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D_arg, "dt_bias": bias_arg, "h0": h0}
    named = {k: t for k, t in named.items() if t is not None}
    leaves = list(named.values())
    reverse = kw.get("reverse", False)

    def steps(t):
        return t.flip(1) if reverse else t

    y_true, fin_true = reference.ssd_scan_sequential(
        steps(x), steps(dt), A, steps(B), steps(C), D_arg, dt_bias=bias_arg, dt_softplus=softplus,
        initial_state=h0)
    y_true = steps(y_true)
    gy, gf = torch.randn_like(y_true), torch.randn_like(fin_true)
    with poisoned_outputs():
        out = ssd_scan(x, dt, A, B, C, D_arg, dt_bias=bias_arg, dt_softplus=softplus,
                       initial_state=h0, return_final_state=with_state, reverse=reverse)
        y, fin = out if with_state else (out, None)
        loss = (y.double() * gy).sum() + ((fin.double() * gf).sum() if with_state else 0)
        got = torch.autograd.grad(loss, leaves)
    loss_true = (y_true * gy).sum() + ((fin_true * gf).sum() if with_state else 0)
    want = torch.autograd.grad(loss_true, leaves)

    slack = [0.0] * len(leaves)
    if baseline:
        y32 = steps(reference.ssd_scan(steps(x), steps(dt), A, steps(B), steps(C), D_arg, dt_bias=bias_arg,
                                       dt_softplus=softplus))
        ref32 = torch.autograd.grad((y32.double() * gy).sum(), leaves)
        slack = [2 * rel_err(r, w) for r, w in zip(ref32, want, strict=True)]
    assert y.dtype == x.dtype
    assert_close("y", y, y_true, dtype)
    if with_state:
        assert_close("final_state", fin, fin_true, torch.float32 if dtype == torch.float32 else dtype)
    for (name, leaf), a, w, extra in zip(named.items(), got, want, slack, strict=True):
        assert a.dtype == leaf.dtype, name
        assert_close(f"d{name}", a, w, dtype, slack=extra)


@pytest.mark.parametrize("length", LENGTHS)
def test_lengths_fp32(length):
    _check(*_shape_with(length), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [62, 257] + ([801] if ON_GPU else []))
def test_lengths_16bit(length, dtype):
    _check(*_shape_with(length), dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("length", [62, 100])
def test_shapes(shape, length):
    b, h, p, g, n = shape
    _check(b, length, h, p, g, n, torch.float32)


@pytest.mark.parametrize("length", [7, 62, 200])
def test_initial_and_final_state(length):
    _check(*_shape_with(length), torch.float32, with_state=True)


@pytest.mark.parametrize("length", [62, 100])
def test_strided_views_and_strong_decay(length):
    _check(*_shape_with(length), torch.float32, strided=True, decay=20.0, baseline=True)


@pytest.mark.parametrize("length", [33, 90])
def test_without_d_bias_softplus(length):
    _check(*_shape_with(length), torch.float32, use_d=False, use_bias=False, softplus=False)


@pytest.mark.parametrize("length", [7, 62, 200])
def test_reverse(length):
    """Backwards along the steps: one chunk (short kernel) and several (chunked kernels)."""
    _check(*_shape_with(length), torch.float32, reverse=True)


@pytest.mark.parametrize(("length", "dtype"), [(100, torch.float32), (257, torch.bfloat16)])
def test_reverse_with_states_and_strided_views(length, dtype):
    """The state enters at the last step and leaves at the first; x, B, C views of one tensor."""
    _check(*_shape_with(length), dtype, reverse=True, with_state=True, strided=True)


def test_reverse_through_the_dispatch_on_the_reference():
    """ops.ssd_scan(reverse=True) served by the reference (flipped copies): the same contract."""
    from bsmamba2 import ops

    b, length, h, p, g, n = 2, 40, 2, 8, 1, 4
    x, dt, A, B, C, D, dt_bias = (t.detach().double().cpu() for t in _inputs(b, length, h, p, g, n, torch.float32))
    h0 = torch.randn(b, h, p, n, dtype=torch.float64)
    kw = dict(dt_bias=dt_bias, dt_softplus=True, initial_state=h0)
    with ops.use_backend("torch"):
        y, fin = ops.ssd_scan(x, dt, A, B, C, D, **kw, return_final_state=True, reverse=True)
    y_true, fin_true = reference.ssd_scan_sequential(x.flip(1), dt.flip(1), A, B.flip(1), C.flip(1), D, **kw)
    assert rel_err(y, y_true.flip(1)) <= 1e-12
    assert rel_err(fin, fin_true) <= 1e-12


def test_matches_chunked_reference_model_layout():
    """The dispatch contract: same result as the reference chunked scan (bf16, model layout)."""
    b, h, p, g, n = SHAPE
    x, dt, A, B, C, D, dt_bias = _inputs(b, 96, h, p, g, n, torch.bfloat16, strided=True)
    kw = dict(dt_bias=dt_bias, dt_softplus=True)
    assert_close("y", ssd_scan(x, dt, A, B, C, D, **kw), reference.ssd_scan(x, dt, A, B, C, D, **kw),
                 torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [62, 100])
def test_model_layout_gradients_share_one_buffer(length, dtype):
    """x | B | C split from one tensor as in the model: dx, dB, dC are written as the slices
    of one buffer, which split_channels hands back without concatenating (torch.cat fails
    here), and the gradient of the packed tensor equals the float64 recurrence's."""
    b, h, p, g, n = SHAPE
    sizes = [h * p, g * n, g * n]
    packed = torch.randn(b, length, sum(sizes), device=DEVICE, dtype=dtype, requires_grad=True)
    _, dt, A, _, _, D, dt_bias = _inputs(b, length, h, p, g, n, dtype)

    def scan(fn, packed):
        x, B, C = split_channels(packed, sizes)
        return fn(x.reshape(b, length, h, p), dt, A, B.reshape(b, length, g, n),
                  C.reshape(b, length, g, n), D, dt_bias=dt_bias, dt_softplus=True)

    packed64 = packed.detach().double().requires_grad_()
    y_true = scan(reference.ssd_scan_sequential, packed64)[0]
    gy = torch.randn_like(y_true)
    want, = torch.autograd.grad(y_true, packed64, gy)
    with poisoned_outputs(), mock.patch("bsmamba2.ops.split.torch.cat", side_effect=AssertionError("cat")):
        y = scan(ssd_scan, packed)
        got, = torch.autograd.grad(y, packed, gy.to(dtype))
    assert_close("d packed", got, want, dtype)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [62, 100])  # the short and the chunked kernels
def test_out_records_the_backward_without_the_forward(length, reverse):
    """``out`` (y of an earlier call on the same inputs, a recompute's): returned as it is with
    no forward kernel launched, and the gradients those of the plain call, bit for bit; an
    ``out`` unlike y is refused."""
    from bsmamba2.ops.triton import ssd

    b, h, p, g, n = SHAPE
    inputs = _inputs(b, length, h, p, g, n, torch.float32, strided=True)
    kw = dict(dt_bias=inputs[-1], dt_softplus=True, reverse=reverse)
    y = ssd_scan(*inputs[:-1], **kw)
    gy = torch.randn_like(y)
    want = torch.autograd.grad(y, inputs, gy)
    with mock.patch.object(ssd, "launch", side_effect=ssd.launch) as launched:
        again = ssd_scan(*inputs[:-1], **kw, out=y.detach())
        got = torch.autograd.grad(again, inputs, gy)
    assert again.data_ptr() == y.data_ptr()
    assert not any(c.kwargs.get("COMPUTE_Y") or c.args[0] is ssd._short_fwd for c in launched.call_args_list)
    assert launched.call_count > 0  # the backward's kernels ran
    for g_got, g_want in zip(got, want, strict=True):
        assert torch.equal(g_got, g_want)
    strided = y.detach().transpose(2, 3).contiguous().transpose(2, 3)
    for bad in (y.detach()[:, 1:], y.detach().half(), strided):
        with pytest.raises(ValueError, match="out must be"):
            ssd_scan(*inputs[:-1], **kw, out=bad)


def _shape_with(length):
    b, h, p, g, n = SHAPE
    if length > 300 and not ON_GPU:
        b = 1  # the interpreter and the float64 loop are slow; one long sequence suffices
    return b, length, h, p, g, n


@pytest.mark.skipif(not ON_GPU, reason="needs > 2^31-element tensors on a GPU")
def test_offsets_past_int32():
    """Band-axis batch past 2^31 elements: the last sequences match a small run of them."""
    b, length, h, p, n = 34_000, 62, 16, 64, 128
    assert b * length * h * p > 2**31
    x = torch.randn(b, length, h, p, device=DEVICE, dtype=torch.bfloat16)
    dt = torch.randn(b, length, h, device=DEVICE, dtype=torch.bfloat16) - 1
    B = torch.randn(b, length, 1, n, device=DEVICE, dtype=torch.bfloat16)
    C = torch.randn_like(B)
    A = -torch.rand(h, device=DEVICE) * 4 - 1
    kw = dict(dt_bias=torch.zeros(h, device=DEVICE), dt_softplus=True)
    x.requires_grad_()
    y = ssd_scan(x, dt, A, B, C, None, **kw)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    tail = slice(b - 3, b)
    xs = x.detach()[tail].clone().requires_grad_()
    ys = ssd_scan(xs, dt[tail], A, B[tail], C[tail], None, **kw)
    (dxs,) = torch.autograd.grad(ys, xs, torch.ones_like(ys))
    assert torch.equal(y[tail], ys)
    assert torch.equal(dx[tail], dxs)


def test_dx_part_never_tunes_on_two_warps():
    """The backward's dx launches leave out the 2-warp candidate (it spills kilobytes per
    thread, whose local memory outlives the tuning); dB and dC keep it, where it wins."""
    from bsmamba2.ops.triton import ssd

    assert ssd._chunk_bwd.early_config_prune is ssd.chunk_bwd_candidates
    candidates = [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 3), (4, 1), (2, 2))]
    for part, warps in ((ssd.PART_DX, [4, 4]), (ssd.PART_DB, [4, 4, 2]), (ssd.PART_DC, [4, 4, 2])):
        kept = ssd.chunk_bwd_candidates(candidates, {"x_ptr": None}, PART=part.value, HEADS=1)
        assert [c.num_warps for c in kept] == warps
    only_two = candidates[2:]
    assert ssd.chunk_bwd_candidates(only_two, {}, PART=ssd.PART_DX.value) == only_two  # never none
