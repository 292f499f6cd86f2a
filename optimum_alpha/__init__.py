"""optimum-alpha: AlphaPruning (heavy-tailed layer-wise sparsity) for Hugging Face causal LMs."""

__version__ = "0.1.0"

from .interrupts import exit_on_interrupt_while_starting  # noqa: E402  (standard library only)

with exit_on_interrupt_while_starting():  # seconds of torch/transformers imports: Ctrl-C = exit 130 in the CLI
    from .configuration import AlphaPruningConfig  # noqa: E402
    from .pruner import AlphaPruner  # noqa: E402
    from .checkpoint import load_pruned  # noqa: E402
    from .checkpoint.quantizer import register as _register_alpha_sparse  # noqa: E402

    _register_alpha_sparse()  # plain AutoModel*.from_pretrained can now load alpha_sparse checkpoints

__all__ = ["AlphaPruner", "AlphaPruningConfig", "__version__", "load_pruned"]
