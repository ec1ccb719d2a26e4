"""Residual mixer blocks (Mamba-2 by default, see :mod:`bsmamba2.model.mixers`) and the
bidirectional module that runs them both ways."""

from __future__ import annotations

import torch
from torch import nn

from bsmamba2 import ops
from bsmamba2.model.config import BSMamba2Config
from bsmamba2.model.mixers import build_mixer
from bsmamba2.model.norms import RMSNorm


class MambaBlock(nn.Module):
    """x ↦ mixer(norm(x)) + x."""

    def __init__(self, cfg: BSMamba2Config) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.dim)
        self.mixer = build_mixer(cfg.mixer, cfg.dim, cfg.mixer_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x) + x

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """mixer(norm(x)): the block without its residual."""
        return self.mixer(self.norm(x))


class BidirectionalMamba(nn.Module):
    """x + merge([fwd(x), flip(bwd(flip(x)))]) over the sequence axis of (batch, length, dim).

    The merge is the official 1×1 ConvTranspose1d (weight [2·dim, dim, 1]), applied as a
    matrix product. A mixer with a ``reverse`` attribute (Mamba-2, Mamba-1, Mamba-3) is made the
    mixer of the reversed sequence instead: the backward block then needs no flipped copies (every
    part of a block but the mixer works step by step).

    The blocks' residuals and the merge are one sum of products, with merge weight
    [A₁; A₂] and bias b: x + b + (m_f + x)·A₁ + (m_b + x)·A₂ = x + x·(A₁ + A₂) + m_f·A₁ +
    m_b·A₂ + b, for the mixer outputs m_f and m_b. Three chained ``addmm`` (each adding its
    product to the one before in the GEMM's epilogue, the first one adding b) and the final
    residual add compute it: no residual adds of the blocks and no concatenated copy (three
    passes over the activations fewer per module, docs/benchmarks.md, issue 19). The sum
    stays apart from x until the end, so under bf16 it is rounded at x's scale only once. In
    inference with the kernels the mixers' ``out_proj`` is folded into the merge as well
    (:meth:`folds_out_proj`): one product per direction instead of two.
    """

    def __init__(self, cfg: BSMamba2Config) -> None:
        super().__init__()
        self.forward_blocks = nn.ModuleList([MambaBlock(cfg)])
        self.backward_blocks = nn.ModuleList([MambaBlock(cfg)])
        self.linear = nn.ConvTranspose1d(2 * cfg.dim, cfg.dim, 1)
        backward_mixer = self.backward_blocks[0].mixer
        self.reverses = hasattr(backward_mixer, "reverse")
        if self.reverses:
            backward_mixer.reverse = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = self.forward_blocks[0], self.backward_blocks[0]
        a1, a2 = self.linear.weight[:, :, 0].split(x.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        update = nn.functional.linear(x2, (a1 + a2).t(), self.linear.bias)
        if self.folds_out_proj(x):
            # m·A = y·(W_outᵀ·A): out_proj and the merge as one product (no m written and read),
            # added in place: an out-of-place addmm first copies its summand into a new output.
            for block, a in zip(blocks, (a1, a2), strict=True):
                y = block.mixer.unprojected(block.norm(x)).reshape(len(x2), -1)
                weight = block.mixer.out_proj.weight.t() @ a
                update.addmm_(y.to(update.dtype), weight.to(update.dtype))
        else:
            fwd = blocks[0].mix(x)
            bwd = blocks[1].mix(x) if self.reverses else blocks[1].mix(x.flip(1)).flip(1)
            update = torch.addmm(update, fwd.reshape(x2.shape), a1)
            update = torch.addmm(update, bwd.reshape(x2.shape), a2)
        return x + update.view(x.shape)

    def folds_out_proj(self, x: torch.Tensor) -> bool:
        """Whether the mixers' ``out_proj`` goes into the merge's product: in inference with the
        kernels (Mamba-2, Mamba-1 and Mamba-3 mixers). Not with gradients: a recomputed mixer
        would then keep its 4× wider output for the backward; not on the reference path: the CPU
        would compute the weight products on each call."""
        return self.reverses and not torch.is_grad_enabled() and ops.reverses_in_kernels(x)
