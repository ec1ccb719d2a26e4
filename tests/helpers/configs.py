"""Micro model configurations: the smallest shapes that still take every code path."""

from __future__ import annotations

from bsmamba2.model import BSMamba2Config

#: One layer, one head per direction (dim 16 · expand 2 / headdim 16 = 2 heads).
TINY_KWARGS = {"dim": 16, "depth": 1, "expand": 2, "headdim": 16, "d_state": 8}
TINY = BSMamba2Config(**TINY_KWARGS)
#: The fastest model that runs: dim 8, one head, a 1× mask MLP (separation and CLI tests).
MICRO = BSMamba2Config(dim=8, depth=1, expand=2, headdim=16, d_state=4, mask_mlp_expansion=1)
