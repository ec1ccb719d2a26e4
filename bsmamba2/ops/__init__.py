"""Mamba-2 operations behind one dispatch point (see :mod:`bsmamba2.ops.dispatch`)."""

from bsmamba2.ops.dispatch import (
    active_backend,
    causal_conv1d,
    gated_rms_norm,
    requested_backend,
    ssd_scan,
)
from bsmamba2.ops.split import split_channels

__all__ = ["active_backend", "causal_conv1d", "gated_rms_norm", "requested_backend", "split_channels",
           "ssd_scan"]
