"""Scoring separations: museval-exact cSDR and uSDR (metrics), MUSDB18 and folder tracks,
museval per-track JSON and summaries (``bsmamba2 evaluate``)."""

from bsmamba2.evaluation.metrics import csdr, framewise_sdr, match_length, median_sdr, usdr, usdr_batch

__all__ = ["csdr", "framewise_sdr", "match_length", "median_sdr", "usdr", "usdr_batch"]
