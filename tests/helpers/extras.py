"""Skip marks for tests that need an optional extra (CI installs every extra; a GPU machine
with only the core dependencies skips these rather than failing on the missing module)."""

from __future__ import annotations

import importlib.util

import pytest

from bsmamba2.errors import EXTRAS


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed."""
    return [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def needs_extra(extra: str) -> pytest.MarkDecorator:
    """Skip the test when a module of ``extra`` is missing."""
    return pytest.mark.skipif(bool(missing(extra)), reason=f"needs bsmamba2[{extra}]: {missing(extra)} missing")
