"""The BSMamba2 network and its STFT front end."""

from bsmamba2.model.bsmamba2 import BSMamba2
from bsmamba2.model.config import PAPER_BANDS, BSMamba2Config
from bsmamba2.model.mamba1 import Mamba
from bsmamba2.model.mamba2 import Mamba2
from bsmamba2.model.mamba3 import Mamba3
from bsmamba2.model.stft import istft, stft

__all__ = ["PAPER_BANDS", "BSMamba2", "BSMamba2Config", "Mamba", "Mamba2", "Mamba3", "istft", "stft"]
