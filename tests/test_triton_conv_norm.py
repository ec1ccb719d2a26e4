"""Triton causal conv1d and gated RMSNorm vs the reference ops run in float64."""

from __future__ import annotations

import pytest
import torch
from triton_testing import DEVICE, ON_GPU, assert_close, poisoned_outputs

from bsmamba2.ops import reference
from bsmamba2.ops.triton import causal_conv1d, gated_rms_norm

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
    truth = ref(*doubles, **kwargs)
    want = torch.autograd.grad((truth * weight).sum(), [t for t in doubles if t is not None])
    assert out.dtype == inputs[0].dtype
    assert_close("out", out, truth, dtype)
    for i, (g, w, leaf) in enumerate(zip(got, want, leaves, strict=True)):
        assert g.dtype == leaf.dtype
        assert_close(f"grad {i}", g, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("length", "width", "activation"),
                         [(1, 4, "silu"), (7, 2, None), (62, 4, "silu"), (63, 3, "silu"), (257, 4, None),
                          (801, 4, "silu")])
def test_causal_conv1d(length, width, activation, dtype):
    batch = 3 if ON_GPU or length < 300 else 1
    packed = torch.randn(batch, length, CHANNELS + 24, device=DEVICE, dtype=dtype)
    x = packed[..., 8 : 8 + CHANNELS].requires_grad_()  # strided, like the in_proj slice
    weight = torch.randn(CHANNELS, width, device=DEVICE, requires_grad=True)  # fp32, like the model
    bias = torch.randn(CHANNELS, device=DEVICE, requires_grad=True)
    _compare(causal_conv1d, reference.causal_conv1d, [x, weight, bias], dtype, activation=activation)


def test_causal_conv1d_without_bias():
    x = torch.randn(2, 33, CHANNELS, device=DEVICE, requires_grad=True)
    weight = torch.randn(CHANNELS, 3, device=DEVICE, requires_grad=True)
    _compare(causal_conv1d, reference.causal_conv1d, [x, weight, None], torch.float32, activation="silu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "dim", "group_size", "gated"),
                         [(1, 64, None, True), (37, 96, 32, True), (300, 48, None, False), (5, 40, 20, True)])
def test_gated_rms_norm(rows, dim, group_size, gated, dtype):
    if ON_GPU:
        rows, dim, group_size = rows * 100, dim * 16, group_size * 16 if group_size else None
    packed = torch.randn(2, rows, 2 * dim + 3, device=DEVICE, dtype=dtype)
    x = (torch.randn(2, rows, dim, device=DEVICE, dtype=dtype)).requires_grad_()
    z = packed[..., 3 : 3 + dim].requires_grad_() if gated else None  # strided, like the in_proj slice
    weight = (torch.rand(dim, device=DEVICE) + 0.5).requires_grad_()
    _compare(gated_rms_norm, reference.gated_rms_norm, [x, z, weight], dtype, eps=1e-5,
             group_size=group_size)
