"""optimum-alpha: AlphaPruning (heavy-tailed layer-wise sparsity) for Hugging Face causal LMs."""

__version__ = "0.1.0"

from .configuration import AlphaPruningConfig  # noqa: E402
from .pruner import AlphaPruner  # noqa: E402
from .checkpoint import load_pruned  # noqa: E402
from .checkpoint.prune_on_load import register as _register_alpha_pruning  # noqa: E402
from .checkpoint.quantizer import register as _register_alpha_sparse  # noqa: E402

_register_alpha_sparse()  # plain AutoModel*.from_pretrained can now load alpha_sparse checkpoints
_register_alpha_pruning()  # ... and prune on load with quantization_config=AlphaPruningConfig(...)

__all__ = ["AlphaPruner", "AlphaPruningConfig", "__version__", "load_pruned"]
