"""Triton selective scan vs the float64 step recurrence: outputs and every input gradient.

On a CPU the kernels run in Triton's interpreter, which runs a scan one element at a time:
small channel and state counts there; the paper's sizes (d_inner 1024, d_state 16) on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from bsmamba2 import ops
from bsmamba2.ops.reference import selective as reference
from bsmamba2.ops.triton import selective as kernels
from bsmamba2.ops.triton import selective_scan
from bsmamba2.ops.triton.selective import CHUNK
from tests.helpers.kernels import DEVICE, ON_GPU, assert_close, poisoned_outputs
from tests.helpers.memory import LiveTensors

LENGTHS = [1, 7, 62, 63, 256, 801]
# (batch, d, n, groups): small for the interpreter, the paper's mixer on a GPU.
SHAPE = (2, 1024, 16, 1) if ON_GPU else (1, 4, 4, 1)
SHAPES = [(2, 1024, 16, 1), (3, 96, 8, 2), (2, 40, 32, 1)] if ON_GPU else [(2, 6, 3, 2), (1, 8, 8, 1)]


def _inputs(b, d, length, n, g, dtype, *, channel_last=True):
    """Fresh random inputs. channel_last: u, delta, z are (b, d, L) views of one (b, L, 3d)
    tensor and B, C of one (b, L, 2gn) tensor, as the model hands them in."""
    if channel_last:
        packed = torch.randn(b, length, 3 * d, device=DEVICE, dtype=dtype)
        u, delta, z = (t.transpose(1, 2) for t in packed.split(d, -1))
        bc = torch.randn(b, length, 2 * g * n, device=DEVICE, dtype=dtype)
        B, C = (t.reshape(b, length, g, n).permute(0, 2, 3, 1) for t in bc.split(g * n, -1))
    else:
        u, delta, z = (torch.randn(b, d, length, device=DEVICE, dtype=dtype) for _ in range(3))
        B, C = (torch.randn(b, g, n, length, device=DEVICE, dtype=dtype) for _ in range(2))
    if g == 1:
        B, C = B[:, 0], C[:, 0]  # the (batch, n, length) form
    delta = delta * 0.5 - 1.0
    A = -(torch.rand(d, n, device=DEVICE) * 4 + 0.5)
    D = torch.randn(d, device=DEVICE)
    bias = torch.randn(d, device=DEVICE) * 0.5
    h0 = torch.randn(b, d, n, device=DEVICE)
    return {k: v.detach().requires_grad_() for k, v in
            dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, initial_state=h0).items()}


def _check(b, d, length, n, g, dtype, *, drop=(), softplus=True, final=True, channel_last=True,
           reverse=False):
    """reverse: the kernels walk the steps backwards; the oracle runs on flipped inputs."""
    ins = {k: v for k, v in _inputs(b, d, length, n, g, dtype, channel_last=channel_last).items()
           if k not in drop}
    if not softplus:  # a raw Δ must be positive
        ins["delta"] = (ins["delta"].detach().abs() * 0.2).requires_grad_()
    kw = {k: ins.get(k) for k in ("D", "z", "delta_bias")}
    h0 = ins.get("initial_state")
    args = [ins[k] for k in ("u", "delta", "A", "B", "C")]

    def steps(t):  # the oracle's view of a (..., length) input or output
        return t.flip(-1) if reverse and t is not None else t

    u, delta, A, B, C = args
    y_true, f_true = reference.selective_scan_sequential(
        steps(u), steps(delta), A, steps(B), steps(C), **{**kw, "z": steps(kw["z"])},
        delta_softplus=softplus, initial_state=h0)
    y_true = steps(y_true)
    gy, gf = torch.randn_like(y_true), torch.randn_like(f_true)
    leaves = list(ins.values())
    with poisoned_outputs():
        y, f = selective_scan(*args, **kw, delta_softplus=softplus, initial_state=h0, return_last_state=True,
                              reverse=reverse)
        loss = (y.double() * gy).sum() + ((f.double() * gf).sum() if final else 0)
        got = torch.autograd.grad(loss, leaves)
    want = torch.autograd.grad((y_true * gy).sum() + ((f_true * gf).sum() if final else 0), leaves)
    assert y.dtype == dtype and y.shape == y_true.shape
    assert_close("out", y, y_true, dtype)
    assert f.dtype == torch.float32
    assert_close("final state", f, f_true, torch.float32 if dtype == torch.float32 else dtype)
    for name, leaf, a, w in zip(ins, leaves, got, want, strict=True):
        assert a.dtype == leaf.dtype and a.shape == leaf.shape, name
        assert_close(f"d{name}", a, w, dtype)


def _shape_with(length):
    b, d, n, g = SHAPE
    if length > 300 and not ON_GPU:
        d, n = 2, 2  # the interpreter is slow: one narrow long sequence
    return b, d, length, n, g


@pytest.mark.parametrize("length", LENGTHS)
def test_lengths_fp32(length):
    _check(*_shape_with(length), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("length", [62] + ([801] if ON_GPU else []))
def test_lengths_16bit(length, dtype):
    _check(*_shape_with(length), dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_and_groups(shape):
    b, d, n, g = shape
    _check(b, d, 63, n, g, torch.float32, channel_last=False)


@pytest.mark.parametrize("length", [40] + ([801] if ON_GPU else []))
def test_without_z_d_bias_state_softplus(length):
    """No optional input; the final state's gradient not asked for."""
    _check(*_shape_with(length), torch.float32, drop=("D", "z", "delta_bias", "initial_state"),
           softplus=False, final=False)


@pytest.mark.parametrize("length", [63] + ([801] if ON_GPU else []))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reverse(length, dtype):
    """reverse=True: the scan of the reversed sequences in their own order, read through
    negated step strides (the initial state enters at the last step); every gradient."""
    _check(*_shape_with(length), dtype, reverse=True)


def test_reverse_through_the_dispatch_on_the_reference():
    """ops.selective_scan(reverse=True) served by the reference (flipped copies): the same
    contract as the kernels'."""
    b, d, n, g = SHAPE
    ins = {k: v.detach() for k, v in _inputs(b, d, 20, n, g, torch.float32).items()}
    args = [ins[k] for k in ("u", "delta", "A", "B", "C")]
    kw = {k: ins[k] for k in ("D", "z", "delta_bias", "initial_state")}
    with ops.use_backend("torch"):
        y, f = ops.selective_scan(*args, **kw, delta_softplus=True, return_final_state=True, reverse=True)
    flipped = [t.flip(-1) if t.dim() >= 3 else t for t in args]
    y_true, f_true = reference.selective_scan_sequential(*flipped, **{**kw, "z": kw["z"].flip(-1)},
                                                         delta_softplus=True)
    assert_close("out", y, y_true.flip(-1), torch.float32)
    assert_close("final state", f, f_true, torch.float32)


def test_matches_reference_and_keeps_layout():
    """Channel-last views in, channel-last out (the model's layout); same result as the
    PyTorch path the dispatch falls back to."""
    b, d, n, g = SHAPE
    ins = _inputs(b, d, 70, n, g, torch.bfloat16)
    args = [ins[k].detach() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    y = selective_scan(*args, delta_softplus=True)
    assert y.stride() == args[0].stride() or y.stride(1) == 1
    assert_close("out", y, reference.selective_scan(*args, delta_softplus=True), torch.bfloat16)


def test_bad_shapes_are_one_line_errors():
    b, d, n, g = SHAPE
    ins = _inputs(b, d, 9, n, g, torch.float32)
    args = [ins[k].detach() for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ValueError, match="A must be a real"):
        selective_scan(args[0], args[1], args[2][:, None], *args[3:])
    with pytest.raises(ValueError, match="B and C must be"):
        selective_scan(*args[:3], args[3][..., :-1], args[4])
    with pytest.raises(ValueError, match="input-independent"):
        selective_scan(*args[:3], args[2], args[4])


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_states_kept_without_a_backward(mode):
    """The chunk states are stored for the backward only: under no_grad or inference_mode,
    where parameters still require grad, the forward makes its output and no (b, chunk, n, d)
    states (they were kept through every inference pass)."""
    b, d, n, length = 1, 8, 8, 4 * CHUNK + 1
    ins = _inputs(b, d, length, n, 1, torch.float32)
    states = (b, 4, n, d)
    with LiveTensors() as live:
        y = selective_scan(**ins, delta_softplus=True)
    assert y.requires_grad and states in live.shapes  # autograd recording: the states are there
    with torch.no_grad() if mode == "no_grad" else torch.inference_mode(), LiveTensors() as live:
        y_inference = selective_scan(**ins, delta_softplus=True)
    assert states not in live.shapes
    assert torch.equal(y_inference, y.detach())


@pytest.mark.parametrize("sub", [1, CHUNK])
def test_backward_sub_chunks(monkeypatch, sub):
    """The backward's register ring over SUB steps of a chunk (recomputing the chunk's first
    steps for each later sub-chunk): the same gradients whatever SUB (the default is 2)."""
    launch = kernels._bwd_config(4)
    monkeypatch.setattr(kernels, "_bwd_config", lambda n: {**launch, "SUB": sub})
    _check(*_shape_with(63), torch.float32)


@triton.jit
def _elementwise(x_ptr, out_ptr, n, WHICH: tl.constexpr, BLOCK: tl.constexpr):
    """One of the forward's fp32 helpers applied to x as ROUGH 2 makes them (16-bit inputs):
    0 ``_silu``, 1 ``_softplus_value``."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    y = kernels._silu(x, 2) if WHICH == 0 else kernels._softplus_value(x, 2)
    tl.store(out_ptr + offs, y, mask=offs < n)


def _apply(which: int, x: torch.Tensor) -> torch.Tensor:
    x = x.to(DEVICE, torch.float32).contiguous()
    out = torch.empty_like(x)
    _elementwise[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), WHICH=which, BLOCK=1024)
    return out.double().cpu()


def test_rough_gate_and_softplus_are_within_16bit_rounding():
    """ROUGH 2's SiLU (tanh.approx on a GPU) and softplus (lg2.approx) against float64:
    the SiLU within |z|·2^−11 (absolute: the tanh's error), the softplus within 2^−9 of
    its value (bf16's half-spacing is 2^−9) over the 16-bit inputs' range of Δ."""
    z = torch.linspace(-30, 30, 200_001, dtype=torch.float64).float()
    silu = torch.nn.functional.silu(z.double())
    assert ((_apply(0, z) - silu).abs() <= z.double().abs() * 2.0 ** -11 + 1e-7).all()
    x = torch.linspace(-8, 40, 200_001, dtype=torch.float64).float()  # Δ from 3.4e-4 up
    sp = torch.nn.functional.softplus(x.double())
    assert ((_apply(1, x) - sp).abs() / sp).max() <= 2.0 ** -9


@pytest.mark.parametrize("rough", [0, 1])
def test_forward_rough_levels(monkeypatch, rough):
    """ROUGH_16BIT 0 (16-bit inputs computed as fp32's) and 1 (the softplus alone by lg2):
    the other levels; 2, the default, runs in every 16-bit test above."""
    monkeypatch.setattr(kernels, "ROUGH_16BIT", rough)
    _check(*_shape_with(62), torch.bfloat16)
