"""The contract every checkpoint writer implements, and the registry that names them.

:func:`optimum_alpha.checkpoint.save_pruned` owns what every format shares (the atomic staging folder,
tokenizer, metadata, chart, model card, manifest); a writer owns only its weights and ``config.json``'s
``quantization_config``, the card's "how to load" section, and the checks of a folder in its format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from ...errors import CheckpointError
from ...plugins import import_plugins

PACKAGE = "optimum_alpha.checkpoint.writers"
DECORATOR = "register_writer"


class CheckpointWriter:
    """Writes a model's weights into a staging folder in one format.

    ``quant_method`` is the ``quantization_config.quant_method`` its folders carry (None: plain
    transformers checkpoints), used to find the writer that verifies a folder.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    quant_method: ClassVar[str | None] = None
    stores_integers: ClassVar[bool] = False  # True: holds quantised (bits=...) weights as integers

    def check_config(self, config: Any) -> None:
        """Refuse, before the model loads, run options whose result this format cannot hold."""
        if getattr(config, "bits", None) is not None and not self.stores_integers:
            raise CheckpointError(
                f"bits={config.bits:g} quantises the weights and format {self.name!r} would store them as floats; "
                "use format 'compressed-tensors' (--format compressed-tensors)."
            )

    def check_model(self, model: Any, config: Any) -> None:
        """Refuse, after loading and before pruning, a model whose pruned matrices this format cannot hold."""

    def __init__(self, **options: Any) -> None:
        """``options``: the format's own save options (``save_pretrained(..., gguf_type=...)``); none by default."""
        if options:
            raise CheckpointError(
                f"checkpoint format {self.name!r} takes no options, got {', '.join(sorted(options))}"
            )

    def check_request(self, model: Any = None, metadata: dict[str, Any] | None = None) -> None:
        """Refuse, before any file is written, a model this format cannot hold (one line naming the fix)."""
        from ...quantization.state import recorded_grids

        grids = recorded_grids(model) if model is not None else {}
        if grids and not self.stores_integers:
            widths = "/".join(str(b) for b in sorted({grid.spec.bits for grid in grids.values()}))
            raise CheckpointError(
                f"this model's block weights are quantised ({widths}-bit) and format {self.name!r} would store "
                "them as floats; save with format='compressed-tensors'."
            )

    def write(self, model: Any, folder: Path, *, max_shard_size: str | int, data: dict[str, Any],
              tokenizer: Any = None) -> dict | None:
        """Write the weights and ``config.json`` into ``folder``; returns the ``quantization_config`` written
        (None for plain checkpoints). ``data`` (the future ``alpha_pruning.json``) may be extended; the
        tokenizer is saved next to the weights by ``save_pruned`` (a format that embeds it reads it here)."""
        raise NotImplementedError

    def load_section(self, repo_hint: str) -> str:
        """The model card's "How to load" text for a folder in this format."""
        raise NotImplementedError

    def verify(self, folder: Path, quantization_config: dict[str, Any], tensor_names: set[str]) -> None:
        """Refuse a folder of this format whose files do not hold what its config lists."""


_WRITERS: dict[str, type[CheckpointWriter]] = {}


def register_writer(name: str) -> Callable[[type[CheckpointWriter]], type[CheckpointWriter]]:
    def decorator(cls: type[CheckpointWriter]) -> type[CheckpointWriter]:
        cls.name = name
        _WRITERS[name] = cls
        return cls

    return decorator


def writer_names() -> tuple[str, ...]:
    import_plugins(PACKAGE, DECORATOR)
    return tuple(sorted(_WRITERS))


def get_writer(name: str, **options: Any) -> CheckpointWriter:
    """The writer of ``name``, built with its save ``options`` (a format without options refuses any)."""
    import_plugins(PACKAGE, DECORATOR)
    if name not in _WRITERS:
        raise CheckpointError(f"unknown checkpoint format {name!r}; choose one of {', '.join(sorted(_WRITERS))}")
    return _WRITERS[name](**options)


def writer_for_quant_method(quant_method: str | None) -> CheckpointWriter | None:
    """The writer whose folders carry this ``quant_method`` (None when none of ours does)."""
    import_plugins(PACKAGE, DECORATOR)
    for cls in _WRITERS.values():
        if quant_method is not None and cls.quant_method == quant_method:
            return cls()
    return None
