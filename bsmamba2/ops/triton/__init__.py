"""Our Triton kernels for the Mamba-2 and Mamba-1 operations, each a ``torch.autograd.Function``.

Importing this package compiles nothing; kernels are compiled (and autotuned over a short
config list keyed on the shapes) at their first call. With ``TRITON_INTERPRET=1`` set
before the import they run on CPU tensors through Triton's interpreter.
"""

from bsmamba2.ops.triton.conv import causal_conv1d
from bsmamba2.ops.triton.norm import gated_rms_norm
from bsmamba2.ops.triton.selective import selective_scan
from bsmamba2.ops.triton.ssd import ssd_scan

__all__ = ["causal_conv1d", "gated_rms_norm", "selective_scan", "ssd_scan"]
