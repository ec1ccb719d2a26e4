"""MUSDB18(-HQ) data: track access, source activity detection, training and validation sets."""

from bsmamba2.data.datasets import MixingDataset, SegmentSampler, ValidationDataset
from bsmamba2.data.musdb import STEMS, DatasetError, Track, list_tracks
from bsmamba2.data.sad import build_index, load_index, salient_windows

__all__ = [
    "STEMS",
    "DatasetError",
    "MixingDataset",
    "SegmentSampler",
    "Track",
    "ValidationDataset",
    "build_index",
    "list_tracks",
    "load_index",
    "salient_windows",
]
