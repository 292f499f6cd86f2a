"""Names written into checkpoints: ``quant_method`` values, the sparse format tag, the marker for loaders
without the plug-in. A leaf module (no imports) so that writers, loaders and verifiers share the constants
without importing each other: that mutual import was the checkpoint package's import cycle."""

SPARSE_QUANT_METHOD = "alpha_sparse"
SPARSE_FORMAT = "sparse-bitmask"
SENTINEL_MESSAGE = (
    "alpha_sparse checkpoint: install optimum-alpha and run `import optimum_alpha` before from_pretrained"
)
# A second marker whose *name* is the message: transformers prints unknown keys in its load report, so a user
# without the plug-in reads what to install right in the output (the report never shows tensor contents).
MARKER_KEY = "INSTALL_optimum-alpha.then.import_optimum_alpha.before.from_pretrained"

WIDTH_QUANT_METHOD = "alpha_width"
WIDTHS_ATTRIBUTE = "alpha_block_widths"
