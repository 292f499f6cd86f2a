"""optimum-alpha: AlphaPruning (heavy-tailed layer-wise sparsity) for Hugging Face causal LMs."""

__version__ = "0.1.0"

from .configuration import AlphaPruningConfig  # noqa: E402
from .pruner import AlphaPruner  # noqa: E402

__all__ = ["AlphaPruner", "AlphaPruningConfig", "__version__"]
