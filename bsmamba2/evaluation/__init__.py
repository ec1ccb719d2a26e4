"""Scoring separations: museval-exact cSDR and uSDR (metrics), bleedless and fullness (bleed),
MUSDB18 and folder tracks, museval per-track JSON and summaries (``bsmamba2 evaluate``)."""

from bsmamba2.evaluation.bleed import bleedless_fullness
from bsmamba2.evaluation.metrics import csdr, framewise_sdr, match_length, median_sdr, usdr, usdr_batch

__all__ = ["bleedless_fullness", "csdr", "framewise_sdr", "match_length", "median_sdr", "usdr", "usdr_batch"]
