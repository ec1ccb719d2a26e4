"""Error measures of the tests."""

from __future__ import annotations

import numpy as np
import torch


def rel_err(actual: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> float:
    """‖actual − truth‖ / ‖truth‖ in float64 (complex128 for complex inputs); the absolute
    error when truth is exactly zero."""
    a, t = torch.as_tensor(actual), torch.as_tensor(truth)
    wide = torch.complex128 if a.is_complex() or t.is_complex() else torch.float64
    diff = (a.to(wide) - t.to(wide)).norm().item()
    ref = t.to(wide).norm().item()
    return diff / ref if ref > 0 else diff
