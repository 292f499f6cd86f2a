"""optimum-alpha: AlphaPruning (heavy-tailed layer-wise sparsity) for Hugging Face causal LMs.

The public names load on first use (PEP 562), so ``import optimum_alpha`` and the command line's ``--help``
stay instant; importing the package still teaches transformers our two ``quant_method`` values
(``alpha_sparse`` checkpoints, ``alpha_pruning`` prune-on-load), see :mod:`optimum_alpha._registration`.
"""

from __future__ import annotations

from ._lazy import lazy_exports
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = ["AlphaPruner", "AlphaPruningConfig", "RecoveryConfig", "__version__", "load_pruned", "recover",
           "save_pruned"]
