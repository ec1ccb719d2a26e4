"""Training with PyTorch Lightning: the official loss, the LightningModule, callbacks."""

from bsmamba2.training.callbacks import FullTrackValidation, Throughput
from bsmamba2.training.checkpoint_io import AtomicCheckpointIO
from bsmamba2.training.ema import EMA
from bsmamba2.training.loss import MultiResolutionLoss
from bsmamba2.training.module import BSMamba2Module, NonFiniteError

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "BSMamba2Module",
    "FullTrackValidation",
    "MultiResolutionLoss",
    "NonFiniteError",
    "Throughput",
]
