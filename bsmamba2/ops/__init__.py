"""The ops of the mixers behind one door: ``ops.ssd_scan(...)``, ``ops.causal_conv1d(...)``,
``ops.gated_rms_norm(...)`` (Mamba-2), ``ops.selective_scan(...)`` (Mamba-1), served by the
PyTorch reference or our Triton kernels as :mod:`bsmamba2.ops.backend` decides
(``BSMAMBA2_KERNELS``, or ``ops.use_backend("torch")``).

Layout: each op has its reference and its kernel side by side under the same name,
``reference/ssd.py`` ↔ ``triton/ssd.py``, ``reference/conv.py`` ↔ ``triton/conv.py``,
``reference/norm.py`` ↔ ``triton/norm.py``, ``reference/selective.py`` ↔
``triton/selective.py`` (the selective scan); :mod:`bsmamba2.ops.dispatch` holds one function
per op.

How to add an op (say ``selective_scan``, in ``selective.py``; the module is named apart from
its function, as ``ssd.py`` holds ``ssd_scan``, because importing the function in
``reference/__init__.py`` would otherwise hide the module there; Mamba-3's: ``mamba3.py``):

1. ``ops/reference/selective.py``: the PyTorch reference with type hints and the op's contract in
   its docstring (shapes, dtypes, what it returns); import it in ``ops/reference/__init__.py``
   (the dispatch finds ``reference.selective`` there, imported once, not per call).
   Test it against a float64 truth (a step-by-step recurrence) in ``tests/ops/``, forward and
   gradients (``torch.autograd.gradcheck``), on fresh random inputs (``tests/helpers/``).
2. One function in ``ops/dispatch.py`` with the same signature (real keyword arguments, no
   ``**kwargs``) whose body is ``return implementation("selective", x).selective_scan(...)``, and
   its name in ``__all__`` below. Until a kernel exists, ``auto`` serves the reference and
   ``triton`` says there is none.
3. Later, ``ops/triton/selective.py``: the kernel as a ``torch.autograd.Function`` behind a function
   with the reference's signature and type hints (what only the reference has, such as its
   ``chunk_size``, stays out of the shared contract). Test it against the reference run in
   float64 with ``tests/helpers/kernels.py`` (small shapes on the CPU interpreter, paper
   shapes on CUDA). Put its timings in docs/benchmarks.md, not in the docstring.

How to add a mixer: see :mod:`bsmamba2.model.mixers`.
"""

from bsmamba2.ops.backend import KernelBackendError, active_backend, requested_backend, use_backend
from bsmamba2.ops.dispatch import (
    causal_conv1d,
    gated_rms_norm,
    mamba3_scan,
    reverses_in_kernels,
    selective_scan,
    ssd_scan,
)
from bsmamba2.ops.split import split_channels

__all__ = ["KernelBackendError", "active_backend", "causal_conv1d", "gated_rms_norm", "mamba3_scan",
           "requested_backend", "reverses_in_kernels", "selective_scan", "split_channels", "ssd_scan",
           "use_backend"]
