"""Pure-PyTorch reference implementations of the ops, one module per op beside its kernel
(``reference/ssd.py`` ↔ ``triton/ssd.py``, ...).

They are the CPU path of the model and the oracle for the GPU kernels. Arithmetic runs in
float32 (float64 for float64 inputs); results are cast back. Under autocast the matrix
products run in its dtype, as torch's own products do. Without autograd (inference,
:func:`~bsmamba2.ops.reference.common.eager_inference`) the ops take fewer passes over
memory: the CPU path of the paper model is bound by them, not by arithmetic
(docs/benchmarks.md).
"""

from bsmamba2.ops.reference.conv import causal_conv1d
from bsmamba2.ops.reference.mamba3 import mamba3_scan, mamba3_scan_sequential
from bsmamba2.ops.reference.norm import gated_rms_norm
from bsmamba2.ops.reference.selective import selective_scan, selective_scan_sequential
from bsmamba2.ops.reference.ssd import ssd_scan, ssd_scan_sequential

__all__ = ["causal_conv1d", "gated_rms_norm", "mamba3_scan", "mamba3_scan_sequential", "selective_scan",
           "selective_scan_sequential", "ssd_scan",
           "ssd_scan_sequential"]
