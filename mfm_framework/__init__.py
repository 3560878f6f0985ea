"""mfm: Meta Flow Maps in PyTorch.

The top-level package is light (no torch import), so plugins can ``from mfm_framework import
hookimpl`` at discovery time and ``mfm --help`` stays fast. Interfaces live in
:mod:`mfm_framework.interfaces`; they are also reachable from here lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from mfm_framework._version import __version__
from mfm_framework.hooks import hookimpl, hookspec

__all__ = [
    "__version__",
    "hookimpl",
    "hookspec",
    # lazily imported from mfm_framework.interfaces:
    "Backbone",
    "Component",
    "ConsistencyLoss",
    "DataSource",
    "DiagonalTarget",
    "Integrator",
    "Interpolant",
    "Metric",
    "NoOptions",
    "Reward",
    "ValueEstimator",
]

_LAZY = {name: "mfm_framework.interfaces" for name in __all__[3:]}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mfm_framework' has no attribute {name!r}")
