"""What a quantising run decides before block 0: valid options, quantisable matrices, a width per matrix;
and what it reports afterwards (bits per matrix, the average, bits per weight with scales, bytes)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from .bits import allocate_bits, average_bits, check_bit_budget
from ..options import QUANT_METHODS
from .spec import check_group_size


def check_quantization_config(config: Any) -> None:
    """Validate (and normalise) the quantisation fields of an :class:`~optimum_alpha.AlphaPruningConfig`."""
    config.weight_quant_method = str(config.weight_quant_method).lower()
    if config.weight_quant_method not in QUANT_METHODS:
        raise ConfigError(f"Unknown quant_method {config.weight_quant_method!r}; choose one of "
                          f"{', '.join(QUANT_METHODS)}.")
    config.bit_allocation = str(config.bit_allocation).lower()
    try:
        config.bit_choices = tuple(sorted({int(b) for b in config.bit_choices}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bit_choices must be whole numbers such as (4, 8), got {config.bit_choices!r}.") from err
    config.act_order = bool(config.act_order)
    if not float(config.quant_damp) > 0:
        raise ConfigError(f"quant_damp must be > 0 (a fraction of XᵀX's mean diagonal such as 0.1), got "
                          f"{config.quant_damp!r}.")
    if config.group_size == 0:  # the command line's spelling of "one scale per row"
        config.group_size = None
    if config.group_size is not None and config.group_size < 1:
        raise ConfigError(f"group_size must be >= 1 or None (one scale per row), got {config.group_size}.")
    config.joint_quantisation = bool(config.joint_quantisation)
    if config.joint_quantisation and (config.bits is None or not uses_joint_sweep(config)):
        raise ConfigError(f"joint_quantisation needs method='sparsegpt', quant_method='gptq' and bits (got "
                          f"method={config.method!r}, quant_method={config.weight_quant_method!r}, "
                          f"bits={config.bits!r}): set those or drop joint_quantisation.")
    if config.bits is not None:
        check_bit_budget(float(config.bits), config.bit_choices, config.bit_allocation)
        if getattr(config, "reconstruct", "none") == "block":
            raise ConfigError("reconstruct='block' refits the kept weights after each block is solved, which would "
                              "move them off their integer grid; with bits, GPTQ already compensates the rounding: "
                              "drop reconstruct (or bits).")


def uses_joint_sweep(config: Any) -> bool:
    """Whether the pruner's own sweep also rounds: ``joint_quantisation``, GPTQ and a pruner that has one."""
    from ..pruning import get_pruner_class

    return (bool(config.joint_quantisation) and config.weight_quant_method == "gptq"
            and getattr(get_pruner_class(config.method), "joint_quantisation", False))


def check_quantizable(matrices: Sequence[Any], config: Any) -> None:
    """Before any slow work: every matrix to quantise has whole groups."""
    widths = [matrix.shape[1] for matrix in matrices]
    every = math.gcd(*widths) if widths else 1  # a suggestion must fit every matrix, not just the first bad one
    for matrix, columns in zip(matrices, widths):
        check_group_size(matrix.name, columns, config.group_size, every)


def plan_bit_widths(config: Any, blocks: Sequence[Any], spectra: Callable[[], Any]) -> dict[str, int]:
    """A width per matrix from ``config.bits`` / ``bit_choices`` / ``bit_allocation``, per block or matrix
    (``granularity``); ``spectra()`` gives the ESD report (only the alpha allocation calls it)."""
    matrices = [matrix for block in blocks for matrix in block.matrices]
    if config.granularity == "block":
        units = [[m.name for m in block.matrices] for block in blocks if block.matrices]
    else:
        units = [[m.name] for m in matrices]
    sizes = {m.name: m.numel for m in matrices}
    block_of = {m.name: m.block_index for m in matrices}
    counts = [sum(sizes[name] for name in unit) for unit in units]
    scores = None
    if config.bit_allocation == "alpha":
        report = spectra()
        unit_scores, _ = report.scores(config.metric, config.granularity)
        if config.granularity == "block":
            by_block = {b.index: s for b, s in zip(report.blocks, unit_scores)}
            scores = [by_block[block_of[unit[0]]] for unit in units]
        else:
            by_name = {spectrum.name: s for spectrum, s in zip(report.matrices, unit_scores)}
            scores = [by_name[unit[0]] for unit in units]
    widths = allocate_bits(scores, counts, float(config.bits), config.bit_choices, config.bit_allocation)
    return {name: width for unit, width in zip(units, widths) for name in unit}


def plan_quantisation(config: Any, blocks: Sequence[Any], pruner_cls: type, spectra: Callable[[], Any]
                      ) -> tuple[type, dict[str, int]]:
    """Before block 0: check every matrix can be quantised, give each its width, and the pruner class that
    prunes with ``pruner_cls`` and then quantises."""
    from .layer import quantising_pruner_class

    check_quantizable([m for block in blocks for m in block.matrices], config)
    widths = plan_bit_widths(config, blocks, spectra)
    return quantising_pruner_class(pruner_cls, widths, config.group_size, config.weight_quant_method), widths


def quantization_summary(config: Any, widths: dict[str, int], blocks: Sequence[Any],
                         grids: dict[str, Any]) -> dict[str, Any]:
    """What the report, ``alpha_pruning.json`` and the card say about the quantisation of a run."""
    from .spec import QuantSpec

    numels = {m.name: m.numel for block in blocks for m in block.matrices}
    gptq = config.weight_quant_method == "gptq"
    joint = uses_joint_sweep(config)
    scale_bytes = next(iter(grids.values())).scales.element_size() if grids else 0
    names = [name for name in widths if name in numels]
    counts = [numels[name] for name in names]
    per_weight = {bits: QuantSpec(bits, config.group_size).bits_per_weight(scale_bytes)
                  for bits in set(widths.values())}
    stored_bits = sum(per_weight[widths[name]] * numels[name] for name in names)
    return {
        "method": config.weight_quant_method,
        # GPTQ's column order and dampening; the joint SparseGPT sweep keeps SparseGPT's (input order, percdamp).
        "act_order": None if not gptq else bool(config.act_order) and not joint,
        "dampening": None if not gptq else float(config.percdamp if joint else config.quant_damp),
        "bit_allocation": config.bit_allocation,
        "bit_choices": list(config.bit_choices),
        "bits_budget": float(config.bits),
        "average_bits": average_bits([widths[n] for n in names], counts),
        "bits_per_weight_with_scales": stored_bits / sum(counts) if counts else 0.0,
        "group_size": config.group_size,
        "symmetric": True,
        "scale_bytes": scale_bytes,
        "quantized_bytes": int(stored_bits // 8),
        "quantized_params": sum(counts),
        "bits": {name: widths[name] for name in names},
    }
