"""split_channels: torch.split's function, and a backward that skips the concatenation when
the pieces' gradients are already the slices of one tensor."""

from __future__ import annotations

import torch

from bsmamba2.ops import split_channels

SIZES = [6, 3, 3]


def _packed():
    return torch.randn(2, 5, sum(SIZES), dtype=torch.float64, requires_grad=True)


def test_forward_is_split_views_and_gradcheck():
    t = _packed()
    pieces = split_channels(t, SIZES)
    for got, want in zip(pieces, t.split(SIZES, -1), strict=True):
        assert got.data_ptr() == want.data_ptr() and torch.equal(got, want)
    # weights on each piece (one unused: its gradient is zero)
    w = [torch.randn(s, dtype=torch.float64) for s in SIZES]
    torch.autograd.gradcheck(lambda t: (split_channels(t, SIZES)[0] * w[0]).sum()
                             + (split_channels(t, SIZES)[2] ** 2 * w[2]).sum(), (t,))


def test_gradients_that_are_slices_of_one_buffer_come_back_as_it():
    t = _packed()
    buf = torch.randn(2, 5, sum(SIZES), dtype=torch.float64)
    got, = torch.autograd.grad(split_channels(t, SIZES), t, buf.split(SIZES, -1))
    assert got.data_ptr() == buf.data_ptr() and got.stride() == buf.stride()
    assert torch.equal(got, buf)


def test_other_gradients_are_concatenated():
    t = _packed()
    grads = [torch.randn(2, 5, s, dtype=torch.float64) for s in SIZES]
    got, = torch.autograd.grad(split_channels(t, SIZES), t, grads)
    assert torch.equal(got, torch.cat(grads, -1))
    # adjacent slices of one buffer, but in the wrong order: concatenated too
    buf = torch.randn(2, 5, sum(SIZES), dtype=torch.float64)
    a, b, c = buf.split([3, 3, 6], -1)
    got, = torch.autograd.grad(split_channels(t, SIZES), t, (c, a, b))
    assert torch.equal(got, torch.cat([c, a, b], -1))


def test_without_gradients_plain_views():
    t = _packed().detach()
    pieces = split_channels(t, SIZES)
    assert all(p.grad_fn is None and p._base is t for p in pieces)
