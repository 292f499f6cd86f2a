"""optimum-alpha: AlphaPruning (heavy-tailed layer-wise sparsity) for Hugging Face causal LMs.

The public names load on first use (PEP 562), so ``import optimum_alpha`` and the command line's ``--help``
stay instant; importing the package still teaches transformers our two ``quant_method`` values
(``alpha_sparse`` checkpoints, ``alpha_pruning`` prune-on-load), see :mod:`optimum_alpha._registration`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ._registration import install as _install_registration

__version__ = "0.1.0"

_EXPORTS = {
    "AlphaPruner": ".pruner",
    "AlphaPruningConfig": ".configuration",
    "RecoveryConfig": ".recovery",
    "load_pruned": ".checkpoint",
    "recover": ".recovery",
    "save_pruned": ".checkpoint",
}

_install_registration()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'optimum_alpha' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["AlphaPruner", "AlphaPruningConfig", "RecoveryConfig", "__version__", "load_pruned", "recover",
           "save_pruned"]
