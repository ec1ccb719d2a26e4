"""Checkpoint reading (every layout in the wild, no pickled code runs) and writing."""

from bsmamba2.checkpoint.io import CheckpointError, infer_config, load_model, read_weights, save_model

__all__ = ["CheckpointError", "infer_config", "load_model", "read_weights", "save_model"]
