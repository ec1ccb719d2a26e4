"""Inputs of the Mamba-3 scan tests: the official layer's recorded scan call
(tests/data/mamba3/) and fresh random inputs of a trained layer's magnitudes."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parents[1] / "data" / "mamba3"
VARIANTS = ("siso", "siso_outproj_norm", "mimo_r2")
OP_INPUTS = ("Q", "K", "V", "ADT", "DT", "Trap", "q_bias", "k_bias", "Angles", "D", "Z")


def fixture_op(variant: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """The scan call's inputs (named as OP_INPUTS), its MIMO weights, and the file's tensors."""
    t = load_file(FIXTURES / f"{variant}.safetensors")
    mimo = variant.startswith("mimo")
    op = {k[3:]: v for k, v in t.items() if k.startswith("op.")}
    sd = {k[11:]: v.double() for k, v in t.items() if k.startswith("state_dict.")}
    op["q_bias"], op["k_bias"] = (sd["C_bias"], sd["B_bias"]) if mimo else (sd["C_bias"][:, 0], sd["B_bias"][:, 0])
    op["D"] = sd["D"]
    args = {name: op.get(name) for name in OP_INPUTS}
    weights = {f"mimo_{w}": sd[f"mimo_{w}"] for w in "xzo"} if mimo else {}
    return args, weights, t


def random_inputs(b: int, length: int, h: int, p: int, n: int, rank: int, dtype=torch.float64,
                  g: int = 1, with_z: bool = True, device: str = "cpu", angles: int | None = None,
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Scan inputs of the magnitudes a trained layer sees: normed q/k, biases near 1, Δ in
    ~(1e-3, 1), A·Δ from the heavy-tail A, angles that turn several times over the sequence
    (``angles`` of them; default n / 4, rope_fraction 0.5)."""
    s = angles or n // 4
    qk = (b, length, g, n) if rank == 1 else (b, length, rank, g, n)
    bias = (h, n) if rank == 1 else (h, rank, n)
    dt = torch.nn.functional.softplus(torch.randn(b, h, length) - 2)
    a = -(torch.rand(b, h, length) * 2 + 0.05)
    args = {
        "Q": torch.randn(qk), "K": torch.randn(qk), "V": torch.randn(b, length, h, p),
        "ADT": a * dt, "DT": dt, "Trap": torch.randn(b, h, length),
        "q_bias": 1 + 0.5 * torch.randn(bias), "k_bias": 1 + 0.5 * torch.randn(bias),
        "Angles": 2 * torch.randn(b, length, h, s), "D": torch.randn(h),
        "Z": torch.randn(b, length, h, p) if with_z else None,
    }
    weights = {f"mimo_{w}": 1 + 0.3 * torch.randn(h, rank, p) for w in "xzo"} if rank > 1 else {}
    cast = {k: None if v is None else v.to(device, dtype) for k, v in args.items()}
    return cast, {k: v.to(device, dtype) for k, v in weights.items()}


def cast(tensors: dict[str, torch.Tensor | None], dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
    return {k: None if v is None else v.to(dtype) for k, v in tensors.items()}


def run(fn, args, weights, **kwargs) -> torch.Tensor:
    return fn(*(args[name] for name in OP_INPUTS), **weights, **kwargs)


def grads(fn, args, weights, w_out: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The output and the gradients of <out, w_out> with respect to every tensor input."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in {**args, **weights}.items() if v is not None}
    a = {name: leaves.get(name) for name in OP_INPUTS}
    out = run(fn, a, {k: leaves.get(k) for k in weights}, **kwargs)
    gs = torch.autograd.grad((out * w_out).sum(), list(leaves.values()), allow_unused=True)
    return out, {k: g for k, g in zip(leaves, gs, strict=True) if g is not None}  # mimo_z without z: none
