"""Triton causal conv1d and gated RMSNorm vs the reference ops run in float64."""

from __future__ import annotations

import pytest
import torch
import triton

from bsmamba2.ops import reference
from bsmamba2.ops.triton import causal_conv1d, conv, gated_rms_norm, norm
from tests.helpers.kernels import DEVICE, ON_GPU, assert_close, poisoned_outputs

CHANNELS = 1280 if ON_GPU else 40
DTYPES = [torch.float32, torch.bfloat16]


def _compare(fn, ref, inputs, dtype, **kwargs):
    """Outputs and gradients of every tensor input: fn(inputs) vs ref(float64 copies)."""
    leaves = [t for t in inputs if t is not None]
    with poisoned_outputs():
        out = fn(*inputs, **kwargs)
        weight = torch.randn(out.shape, device=DEVICE, dtype=torch.float64)
        got = torch.autograd.grad((out.double() * weight).sum(), leaves)
    doubles = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    truth = ref(*doubles, **{k: v for k, v in kwargs.items() if k != "reverse"})
    want = torch.autograd.grad((truth * weight).sum(), [t for t in doubles if t is not None])
    assert out.dtype == inputs[0].dtype
    assert_close("out", out, truth, dtype)
    for i, (g, w, leaf) in enumerate(zip(got, want, leaves, strict=True)):
        assert g.dtype == leaf.dtype
        assert_close(f"grad {i}", g, w, dtype)


CONV_CASES = [(1, 4, "silu"), (2, 2, "silu"), (3, 4, None), (7, 2, None), (62, 4, "silu"), (65, 3, "silu"),
              (257, 4, None)]


@pytest.mark.parametrize(("length", "width", "activation", "dtype"),
                         [(*case, dtype) for case in CONV_CASES for dtype in DTYPES]
                         + [(801, 4, "silu", torch.bfloat16)] + ([(801, 4, "silu", torch.float32)] if ON_GPU else []))
def test_causal_conv1d(length, width, activation, dtype):
    """Lengths below the width, around the tile / span sizes of both kernels, and long."""
    batch = 3 if ON_GPU or length < 100 else 1
    packed = torch.randn(batch, length, CHANNELS + 24, device=DEVICE, dtype=dtype)
    x = packed[..., 8 : 8 + CHANNELS].requires_grad_()  # strided, like the in_proj slice
    weight = torch.randn(CHANNELS, width, device=DEVICE, requires_grad=True)  # fp32, like the model
    bias = torch.randn(CHANNELS, device=DEVICE, requires_grad=True)
    _compare(causal_conv1d, reference.causal_conv1d, [x, weight, bias], dtype, activation=activation)


@pytest.mark.parametrize(("length", "width", "dtype"), [(3, 4, torch.float32), (65, 3, torch.float32),
                                                     (300, 4, torch.bfloat16)])
def test_causal_conv1d_reverse(length, width, dtype):
    """reverse=True: the kernels read and write backwards along the steps; the truth is the
    reference on flipped copies (an anti-causal conv), gradients included."""
    packed = torch.randn(2, length, CHANNELS + 24, device=DEVICE, dtype=dtype)
    x = packed[..., 8 : 8 + CHANNELS].requires_grad_()
    weight = torch.randn(CHANNELS, width, device=DEVICE, requires_grad=True)
    bias = torch.randn(CHANNELS, device=DEVICE, requires_grad=True)

    def flipped_reference(x, weight, bias, activation):
        return reference.causal_conv1d(x.flip(1), weight, bias, activation).flip(1)

    _compare(causal_conv1d, flipped_reference, [x, weight, bias], dtype, activation="silu", reverse=True)


@pytest.mark.parametrize(("dtype", "bias", "channels_last"),
                         [(torch.float32, False, True), (torch.float16, True, False)])
def test_causal_conv1d_layouts(dtype, bias, channels_last):
    """No bias; fp16; an input whose channels are not contiguous (a transposed (b, d, l))."""
    length = 70
    if channels_last:
        x = torch.randn(2, length, CHANNELS, device=DEVICE, dtype=dtype)
    else:
        x = torch.randn(2, CHANNELS, length, device=DEVICE, dtype=dtype).transpose(1, 2)
    x.requires_grad_()
    weight = torch.randn(CHANNELS, 3, device=DEVICE, dtype=dtype, requires_grad=True)
    b = torch.randn(CHANNELS, device=DEVICE, requires_grad=True) if bias else None
    _compare(causal_conv1d, reference.causal_conv1d, [x, weight, b], dtype, activation="silu")


NORM_CASES = [(1, 64, None, True), (37, 96, 32, True), (300, 48, None, False), (5, 40, 20, True),
              (130, 64, 16, True)]  # 300 and 130 rows: several backward programs, the last one partial


@pytest.mark.parametrize(("rows", "dim", "group_size", "gated", "dtype"),
                         [(*case, dtype) for case in NORM_CASES for dtype in DTYPES]
                         + [(70, 32, None, True, torch.float16)])
def test_gated_rms_norm(rows, dim, group_size, gated, dtype):
    if ON_GPU:
        rows, dim, group_size = rows * 100, dim * 16, group_size * 16 if group_size else None
    packed = torch.randn(2, rows, 2 * dim + 3, device=DEVICE, dtype=dtype)
    x = (torch.randn(2, rows, dim, device=DEVICE, dtype=dtype)).requires_grad_()
    z = packed[..., 3 : 3 + dim].requires_grad_() if gated else None  # strided, like the in_proj slice
    weight = (torch.rand(dim, device=DEVICE) + 0.5).requires_grad_()
    _compare(gated_rms_norm, reference.gated_rms_norm, [x, z, weight], dtype, eps=1e-5,
             group_size=group_size)


@pytest.mark.skipif(ON_GPU, reason="on a GPU the autotuner runs every candidate itself")
@pytest.mark.parametrize("i", range(max(len(conv.FWD_TUNING), len(conv.BWD_TUNING), len(norm.TUNING))))
def test_every_gpu_config(i, monkeypatch):
    """The interpreter runs one config per kernel; check each GPU autotune candidate too."""
    tunings = [(conv._conv_fwd, conv.FWD_TUNING), (conv._conv_bwd, conv.BWD_TUNING),
               (norm._norm_fwd, norm.TUNING), (norm._norm_bwd, norm.TUNING)]
    for kernel, tuning in tunings:
        monkeypatch.setattr(kernel, "configs", [triton.Config(tuning[i % len(tuning)][2])])
    x = torch.randn(2, 70, CHANNELS, device=DEVICE).requires_grad_()
    weight = torch.randn(CHANNELS, 4, device=DEVICE, requires_grad=True)
    bias = torch.randn(CHANNELS, device=DEVICE, requires_grad=True)
    _compare(causal_conv1d, reference.causal_conv1d, [x, weight, bias], torch.float32, activation="silu")
    y = torch.randn(130, 64, device=DEVICE).requires_grad_()
    z = torch.randn(130, 64, device=DEVICE).requires_grad_()
    w = (torch.rand(64, device=DEVICE) + 0.5).requires_grad_()
    _compare(gated_rms_norm, reference.gated_rms_norm, [y, z, w], torch.float32, eps=1e-5, group_size=32)


@pytest.mark.skipif(not ON_GPU, reason="needs tensors of more than 2^31 elements")
def test_offsets_past_int32():
    """Elements past index 2^31 (int64 offsets): the last sequence / rows against the reference."""
    x = torch.randn(2**31 // (801 * 1280) + 2, 801, 1280, device=DEVICE, dtype=torch.bfloat16)
    weight = torch.randn(1280, 4, device=DEVICE)
    bias = torch.randn(1280, device=DEVICE)
    x.requires_grad_()
    y = causal_conv1d(x, weight, bias, "silu")
    dy = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, [x], dy)
    last = x[-1:].detach().double().requires_grad_()
    truth = reference.causal_conv1d(last, weight.double(), bias.double(), "silu")
    (want,) = torch.autograd.grad(truth, [last], dy[-1:].double())
    assert_close("out", y[-1:], truth, torch.bfloat16)
    assert_close("dx", dx[-1:], want, torch.bfloat16)
    del x, y, dy, dx
    rows, dim = 2**31 // 1024 + 1000, 1024
    a = torch.randn(rows, dim, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    z = torch.randn(rows, dim, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    w = torch.rand(dim, device=DEVICE) + 0.5
    out = gated_rms_norm(a, z, w, 1e-5, None)
    dout = torch.randn_like(out)
    da, dz = torch.autograd.grad(out, [a, z], dout)
    tail = [t[-1000:].detach().double().requires_grad_() for t in (a, z)]
    truth = reference.gated_rms_norm(tail[0], tail[1], w.double(), 1e-5, None)
    want = torch.autograd.grad(truth, tail, dout[-1000:].double())
    assert_close("out", out[-1000:], truth, torch.bfloat16)
    assert_close("dx", da[-1000:], want[0], torch.bfloat16)
    assert_close("dz", dz[-1000:], want[1], torch.bfloat16)
