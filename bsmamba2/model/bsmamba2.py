"""BSMamba2: band-split front end, 6 × (time, band) bidirectional Mamba-2 layers, masks."""

from __future__ import annotations

import torch
from torch import nn

from bsmamba2.model.bands import BandSplit, MaskEstimator, band_widths
from bsmamba2.model.blocks import BidirectionalMamba
from bsmamba2.model.config import BSMamba2Config
from bsmamba2.model.norms import BandRMSNorm

PIECE_TOKENS = 16384
"""Tokens (sequences × steps) per call of a bidirectional module in CPU inference: smaller
pieces hold less memory, but each op's threads meet more often, which costs time when other
programs share the cores (docs/benchmarks.md)."""


def in_pieces(module: nn.Module, x: torch.Tensor, tokens: int | None = None) -> torch.Tensor:
    """``module(x)`` for x (sequences, length, dim), in CPU inference a few sequences at a time.

    Each sequence is mixed on its own, so the result is the same; what changes is the size of
    the module's temporaries: on the paper model an 8 s segment's are 100–250 MB each when all
    62 (time axis) or 801 (band axis) sequences go at once, a quarter of that in pieces of
    ``tokens`` (default :data:`PIECE_TOKENS`). That bounds the peak memory, whatever the
    batch. The pieces are of equal size, the last one filled up with zero sequences that are
    dropped after, so a compiled module sees one shape. With gradients (training) or off the
    CPU it is one call.
    """
    n, length = x.shape[:2]
    per = max(1, (tokens or PIECE_TOKENS) // length)
    if x.device.type != "cpu" or torch.is_grad_enabled() or per >= n:
        return module(x)
    pieces = -(-n // per)
    per = -(-n // pieces)
    if pieces * per > n:
        x = torch.cat([x, x.new_zeros(pieces * per - n, *x.shape[1:])])
    return torch.cat([module(piece) for piece in x.split(per)])[:n]


class BSMamba2(nn.Module):
    """Complex mask estimation on the STFT. ``BSMamba2()`` is the paper configuration.

    ``forward(spec)``: complex spec [B, C, F, T] → separated complex specs
    [B, n_stems, C, F, T]. Keyword arguments override fields of :class:`BSMamba2Config`.
    """

    def __init__(self, config: BSMamba2Config | None = None, **overrides) -> None:
        super().__init__()
        # A new mixer named in the overrides starts from its own defaults (BSMamba2Config.replace).
        cfg = (config or BSMamba2Config()).replace(**overrides)
        self.config = cfg
        widths = band_widths(cfg.bands, cfg.channels)
        # Registration order = the official state_dict order.
        self.layers = nn.ModuleList(
            [nn.ModuleList([BidirectionalMamba(cfg), BidirectionalMamba(cfg)]) for _ in range(cfg.depth)]
        )
        self.final_norm = BandRMSNorm(cfg.dim)
        self.band_split = BandSplit(cfg.dim, widths)
        self.mask_estimators = nn.ModuleList(
            [MaskEstimator(cfg.dim, widths, cfg.mask_mlp_expansion) for _ in range(cfg.n_stems)]
        )

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        batch, channels, freqs, frames = spec.shape
        if channels != self.config.channels or freqs != sum(self.config.bands):
            raise ValueError(
                f"expected a spectrogram [B, {self.config.channels}, {sum(self.config.bands)}, T], "
                f"got {list(spec.shape)}"
            )
        # Feature index of (bin f, channel c, re/im p) is (f·C + c)·2 + p.
        feats = torch.view_as_real(spec).permute(0, 3, 2, 1, 4).reshape(batch, frames, -1)
        x = self.band_split(feats)  # (B, T, K, dim)
        n_bands = x.shape[2]
        for time_block, band_block in self.layers:
            x = x.transpose(1, 2).reshape(batch * n_bands, frames, -1)
            x = in_pieces(time_block, x)
            x = x.reshape(batch, n_bands, frames, -1).transpose(1, 2).reshape(batch * frames, n_bands, -1)
            x = in_pieces(band_block, x)
            x = x.reshape(batch, frames, n_bands, -1)
        x = self.final_norm(x)
        masks = torch.stack([m(x) for m in self.mask_estimators], dim=1)  # (B, S, T, 4F)
        masks = masks.float().reshape(batch, -1, frames, freqs, channels, 2).permute(0, 1, 4, 3, 2, 5)
        masks = torch.view_as_complex(masks.contiguous().to(spec.real.dtype))
        return spec.unsqueeze(1) * masks
