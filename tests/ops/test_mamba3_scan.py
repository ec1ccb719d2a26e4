"""The Mamba-3 scan: the chunked reference against the float64 step oracle on fresh random
inputs, and both against the official layer's recorded scan call (tests/data/mamba3/)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from bsmamba2.ops.reference import mamba3 as ref
from tests.helpers.mamba3 import FIXTURES, VARIANTS, fixture_op, grads, random_inputs, run
from tests.helpers.numerics import rel_err


@pytest.mark.parametrize("variant", VARIANTS)
def test_oracle_and_chunked_match_the_official_scan_call(variant):
    args, weights, t = fixture_op(variant)
    chunk = 8 if variant.startswith("mimo") else 16
    assert rel_err(run(ref.mamba3_scan_sequential, args, weights), t["op.out"]) <= 1e-12
    out, g = grads(ref.mamba3_scan, args, weights, t["op_grad.out"], chunk_size=chunk)
    assert rel_err(out, t["op.out"]) <= 1e-12
    names = {"Q": "Q", "K": "K", "V": "V", "ADT": "ADT", "DT": "DT", "Trap": "Trap", "Angles": "Angles",
             "Z": "Z", "D": "grad.D"}
    for name, key in names.items():
        if name in g:
            truth = t[key] if key.startswith("grad.") else t[f"op_grad.{key}"]
            assert rel_err(g[name], truth) <= 1e-12, name
    bias_truth = {"q_bias": t["grad.C_bias"], "k_bias": t["grad.B_bias"]}
    for name, truth in bias_truth.items():
        assert rel_err(g[name], truth.reshape(g[name].shape)) <= 1e-12, name
    for name in weights:
        assert rel_err(g[name], t[f"grad.{name}"]) <= 1e-12, name


def test_fixture_records_the_pairings():
    """The fixtures were made with the pairings our reference uses (SISO (2j, 2j+1), MIMO (j, j+N/2))."""
    for variant in VARIANTS:
        with safe_open(str(FIXTURES / f"{variant}.safetensors"), "pt") as f:
            meta = json.loads(f.metadata()["fixture"])
        assert ("N/2" in meta["rotation_pairing"]) == variant.startswith("mimo"), meta["rotation_pairing"]


@pytest.mark.parametrize(("length", "rank", "chunk"), [(1, 1, 16), (7, 2, 4), (62, 1, 64), (63, 4, 16),
                                                       (64, 1, 16), (65, 2, 16), (65, 1, 64)])
def test_chunked_reference_matches_oracle(length, rank, chunk):
    args, weights = random_inputs(2, length, 4, 8, 16, rank, g=2 if rank == 1 else 1)
    w_out = torch.randn(2, length, 4, 8, dtype=torch.float64)
    want, want_g = grads(ref.mamba3_scan_sequential, args, weights, w_out)
    got, got_g = grads(ref.mamba3_scan, args, weights, w_out, chunk_size=chunk)
    assert rel_err(got, want) <= 1e-12
    for name, g in want_g.items():
        # the absolute floor: at length 1 the angles' gradient is zero in exact arithmetic
        assert (got_g[name] - g).norm() <= 1e-11 * g.norm() + 1e-14, name


@pytest.mark.parametrize("rank", [1, 2])
def test_reverse_and_halved_pairs(rank):
    """``reverse``: the float64 oracle on the flipped sequences, outputs and gradients;
    ``halved_pairs`` (SISO; MIMO's pairs are (j, j + N/2) already and it changes nothing): the
    same scan of q, k and biases given with their pairs as (j, j + N/2)."""
    args, weights = random_inputs(2, 37, 4, 8, 16, rank)
    w_out = torch.randn(2, 37, 4, 8, dtype=torch.float64)

    def flipped_oracle(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D=None, z=None, **kw):
        return ref.mamba3_scan_sequential(q.flip(1), k.flip(1), v.flip(1), adt.flip(2), dt.flip(2), trap.flip(2),
                                          q_bias, k_bias, angles.flip(1), D, z.flip(1), **kw).flip(1)

    want, want_g = grads(flipped_oracle, args, weights, w_out)
    got, got_g = grads(ref.mamba3_scan, args, weights, w_out, chunk_size=16, reverse=True)
    assert rel_err(got, want) <= 1e-12
    for name, g in want_g.items():
        assert (got_g[name] - g).norm() <= 1e-11 * g.norm(), name
    if rank == 1:
        halved = {**args, **{k: ref.halves_first(args[k]) for k in ("Q", "K", "q_bias", "k_bias")}}
        assert not torch.equal(halved["Q"], args["Q"])
        torch.testing.assert_close(run(ref.mamba3_scan, halved, weights, halved_pairs=True),
                                   run(ref.mamba3_scan, args, weights), rtol=0, atol=0)
    torch.testing.assert_close(ref.adjacent_pairs(ref.halves_first(args["Q"])), args["Q"], rtol=0, atol=0)


def test_chunked_reference_float32_and_per_rank_outputs():
    args, weights = random_inputs(1, 40, 2, 8, 16, 2)
    want = run(ref.mamba3_scan_sequential, args, weights)
    args32 = {k: None if v is None else v.float() for k, v in args.items()}
    got = run(ref.mamba3_scan, args32, {k: v.float() for k, v in weights.items()}, chunk_size=16)
    assert got.dtype == torch.float32 and rel_err(got, want) <= 1e-5
    per_rank = run(ref.mamba3_scan, args, {**weights, "mimo_o": None}, chunk_size=16)
    assert per_rank.shape == (1, 40, 2, 2, 8)
    assert rel_err((per_rank * weights["mimo_o"].transpose(0, 1)).sum(2), want) <= 1e-12


def test_bad_shapes_are_one_line_errors():
    args, weights = random_inputs(1, 5, 2, 4, 8, 2)
    with pytest.raises(ValueError, match="mimo_x"):
        run(ref.mamba3_scan, args, {})
    args1, _ = random_inputs(1, 5, 2, 4, 8, 1)
    with pytest.raises(ValueError, match="need mimo_x"):
        run(ref.mamba3_scan, args1, {"mimo_o": weights["mimo_o"]})
