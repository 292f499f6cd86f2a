"""``AlphaPruningConfig``: everything that decides a pruning run, validated and JSON-serialisable."""

from __future__ import annotations

import copy
import json
import math
import numbers
import types
import typing
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from .allocation import check_epsilon, check_sparsity
from .allocations import allocation_classes, get_allocation
from .errors import ConfigError
from .esd_sampling import FarmsOptions, check_esd_sampling
from .matrices import compile_patterns
from .nm import check_mixed_sparsity
from .options import (
    AUTO,
    BLOCK_SCORES,
    FIX_FINGERS,
    GRANULARITIES,
    METRICS,
    MIXED_NM_PREFIX,
    SAMPLINGS,
    STRUCTURES,
    canonical_metric,
    default,
    resolve_seqlen,
)
from .pruning import get_pruner_class, pruner_classes
from .quantization.plan import check_quantization_config
from .reconstruction import check_reconstruct

# ``quant_method`` of a config passed to ``from_pretrained(quantization_config=...)``: prune on load.
QUANT_METHOD = "alpha_pruning"


def parse_mixed_nm(nm: str | None) -> int | None:
    """``"mixed:8"`` -> 8: an N per block (or matrix) chosen by the allocation, groups of M = 8."""
    if nm is None or not str(nm).lower().startswith(MIXED_NM_PREFIX):
        return None
    try:
        m = int(str(nm)[len(MIXED_NM_PREFIX):])
    except ValueError as err:
        raise ConfigError(f"Mixed N:M must look like 'mixed:M' (e.g. 'mixed:8'), got {nm!r}.") from err
    if m < 2:
        raise ConfigError(f"Mixed N:M needs groups of M >= 2 weights, got {nm!r}; use e.g. 'mixed:8'.")
    return m


def parse_nm(nm: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4): N weights kept in every group of M consecutive input weights. None for no
    pattern or for a mixed one (see :func:`parse_mixed_nm`)."""
    if nm is None or parse_mixed_nm(nm) is not None:
        return None
    try:
        n, m = (int(part) for part in str(nm).split(":"))
    except ValueError as err:
        raise ConfigError(f"nm must look like 'N:M' (e.g. '2:4'), got {nm!r}.") from err
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern {nm!r} needs 0 < N < M (N weights kept per group of M), e.g. '2:4'.")
    return n, m


def _describe(value: Any) -> str:
    return f"the string {value!r}" if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


_KINDS = {bool: "true or false (bool)", int: "a whole number (int)", float: "a number (float)", str: "a string"}
_PLURALS = {bool: "booleans", int: "whole numbers", float: "numbers", str: "strings"}


def _kind(annotation: Any) -> str:
    """How a declared type is named in an error message."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        element = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
        return "a list of " + _PLURALS.get(element, "values")
    return _KINDS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _same_kind(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the declared type's kind (a float NaN is of kind float)."""
    if annotation in (int, float):
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    origin = typing.get_origin(annotation) or annotation
    return isinstance(origin, type) and isinstance(value, origin)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against a field's declared type: bool/int/float/str, ``list[T]``/``tuple[T, ...]``,
    or a union of them (optionally ``| None``).

    Numbers must be real numbers, finite, and whole for ``int`` fields (``64.0`` becomes ``64``); strings
    are never parsed into numbers, so ``"0.5"`` from a hand-written JSON file is refused with a message
    rather than failing later inside ``prune()``. A list field takes a list (or tuple) of its element type,
    and a list of strings also one string (``ignore="re:.*gate"``).
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        options = [arg for arg in args if arg is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) == 1:
            return _coerce(name, value, options[0])
        if Any in options:
            return value
        closest = None
        for option in options:  # the first declared type that accepts the value
            try:
                return _coerce(name, value, option)
            except ConfigError as error:
                if _same_kind(value, option):  # a value of that type, refused for its value (nan, 2.5)
                    closest = closest or error
        raise closest or ConfigError(
            f"{name} must be {' or '.join(_kind(o) for o in options)}, got {_describe(value)}.")
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        element = typing.get_args(annotation)[0] if typing.get_args(annotation) else Any
        if isinstance(value, str) and element is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            example = f"; write [{value.strip()}]" if isinstance(value, str) and _is_number(value) else ""
            raise ConfigError(f"{name} must be {_kind(annotation)}, got {_describe(value)}{example}.")
        items = [value_ if element is Any else _coerce(f"{name}[{i}]", value_, element)
                 for i, value_ in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false (bool), got {_describe(value)}.")
        return value
    if annotation in (int, float):
        kind = _KINDS[annotation]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            hint = f"; write {value.strip()} without quotes" if isinstance(value, str) and _is_number(value) else ""
            raise ConfigError(f"{name} must be {kind}, got {_describe(value)}{hint}.")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}.")
        if annotation is int:
            if not float(value).is_integer():
                raise ConfigError(f"{name} must be {kind}, got {value!r}.")
            return int(value)
        return float(value)
    if annotation is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {_describe(value)}.")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_field_types(config: Any) -> None:
    """Check (and normalise) every dataclass field of ``config`` by its declared type; fields added later
    are covered without further code."""
    hints = typing.get_type_hints(type(config))
    for spec in fields(config):
        setattr(config, spec.name, _coerce(spec.name, getattr(config, spec.name), hints.get(spec.name, Any)))


@dataclass(repr=False)
class AlphaPruningConfig(QuantizationConfigMixin):
    """Configuration of one pruning run; also a transformers quantization config (``quant_method``
    ``"alpha_pruning"``), so ``AutoModelForCausalLM.from_pretrained(id, quantization_config=config)`` returns
    the pruned model (see :mod:`optimum_alpha.checkpoint.prune_on_load`).

    Args:
        sparsity: target fraction of prunable weights (Linear layers inside the blocks) set to zero.
        method: which weights go inside a layer: ``magnitude``, ``wanda``, ``sparsegpt`` or ``alps``.
        allocation: how sparsity is spread over layers: ``uniform``, ``alpha`` (AlphaPruning) or ``owl``.
        metric: ESD metric driving the ``alpha`` allocation (``alpha_hill`` in the paper).
        epsilon: non-uniformity ε of the alpha mapping, ratios in [1 - ε, 1 + ε] (0.3: paper's LLaMA setting),
            or ``"auto"``: one prune per value of ``epsilon_grid``, each scored by perplexity on ``heldout``
            calibration-source windows disjoint from the calibration windows; the best one is kept
            (see :mod:`optimum_alpha.epsilon_search`). Costs len(epsilon_grid) + 1 prunes.
        epsilon_grid: the ε values tried by ``epsilon="auto"`` (the paper's sweep: 0.1 to 0.5).
        heldout: held-out windows scoring ``epsilon="auto"`` (never the evaluation set).
        max_sparsity: no unit gets more than this; the remainder is redistributed so the total stays exact.
        granularity: allocate per ``block`` (paper default) or per ``matrix``.
        fix_finger: ``reference`` (authors' code) or ``strict`` xmin window of the Hill fit.
        esd_sampling: ``full`` (each whole matrix) or ``farms`` (FARMS, arXiv 2506.06280: eigenvalues of
            ``farms_rows`` x ``farms_q_ratio·farms_rows`` windows on a grid of ``farms_ops_per_dim`` starts per
            dimension, pooled, xmin at their middle; removes the aspect-ratio bias of the alphas). Applies to
            every metric and every allocation that reads the ESD.
        calibration_dataset: ``c4``/``wikitext2``, a local text/json/jsonl/parquet file or a ``datasets`` Dataset.
            ``c4`` is the references' C4 training shard when the Hub is reachable, else the shipped sample.
        calibration_sampling: ``document`` (the references: each window at a random offset inside one document
            longer than the window) or ``joined`` (documents joined, cut into consecutive windows). ``document``
            falls back to ``joined``, with a logged notice, when too few documents are long enough.
        nsamples: number of calibration windows; None: the paper's 128, or as many as the source holds.
        seqlen: tokens per window; None means min(2048, the model's max positions), never the full context
            (131072 positions of Llama-3 would allocate a 64 GiB buffer).
        seed: seed of the calibration sampling.
        calibration_batch_tokens: tokens per block forward over the calibration windows (as many whole windows
            as fit, at least one); results equal one window at a time up to float rounding.
        nm: optional N:M semi-structured pattern. ``"N:M"`` (e.g. ``"2:4"``): N of every M consecutive input
            weights kept in every layer; sparsity is then 1 - N/M and ``sparsity``/``allocation`` are not used.
            ``"mixed:M"`` (e.g. ``"mixed:8"``, paper appendix H.6): each block (or matrix) gets its own N,
            chosen by ``allocation`` so that the total kept fraction matches 1 - ``sparsity``.
        dlp_alpha: DLP's sparsity spread α (``allocation="dlp"``; the authors' 0.15).
        atp_beta: ATP's common difference β between the sparsities of consecutive blocks (``allocation="atp"``),
            or ``"auto"``: one prune per value of ``atp_beta_grid`` scored on ``heldout`` windows, like ε auto.
        reconstruct: ``none`` or ``block``: after each block is pruned, refit its kept weights (mask fixed) so
            that every matrix reproduces its dense output on the calibration inputs, in forward order (see
            :mod:`optimum_alpha.reconstruction`). Any method, N:M and experts; needs calibration text.
        reconstruct_iters / reconstruct_damp: conjugate-gradient steps of that refit per matrix, and its ridge as
            a fraction of the mean diagonal of XᵀX.
        owl_threshold / owl_lambda: OWL's outlier multiple M and sparsity spread λ (``allocation="owl"``,
            which allocates per block).
        percdamp / blocksize: SparseGPT's Hessian dampening (fraction of mean diagonal; ALPS uses it too) and
            column block size.
        alps_rho / alps_max_iter: ALPS's initial ADMM penalty ρ₀ and iteration cap (the support usually
            settles in 30-40 iterations); alps_pcg_iters / alps_pcg_tol: conjugate-gradient refit of the
            kept weights (iterations, relative residual tolerance). Defaults are the paper's.
        tokenizer: for pruning inside ``from_pretrained`` only: a tokenizer, or the name/folder to load one from
            (default: the model's own). ``AlphaPruner`` uses the tokenizer it was given.
        dataset: alias of ``calibration_dataset`` (the name transformers' ``GPTQConfig`` uses).
        ignore: weights inside the blocks to keep dense, as module-name patterns (``"re:.*self_attn.*"`` for a
            regular expression matched from the start of the name, else an exact name or name suffix). Expert
            matrices are named ``<experts module>.<expert>.{gate,up,down}_proj``. Routers are kept dense
            unless ``prune_routers``; every other weight inside the blocks must be pruned or ignored.
        prune_routers: prune MoE router weights like any matrix (default: keep them dense).
        block_score: how a block's score is made from its matrices' metrics: ``mean`` (paper; every expert
            matrix counts once) or ``weighted`` by parameter count.
        structure: ``unstructured`` (zeros inside the weights) or ``width``: remove whole attention heads and
            MLP channels so that ``sparsity`` of the block weights is gone, giving a smaller dense model
            (Llama-style blocks; ``allocation`` sets each block's share, see docs/structured.md).
        unstructured_sparsity: with ``structure="width"``, then zero this fraction of the remaining block
            weights with ``method`` (and/or apply ``nm``); None: width pruning only.
        structured_refit: refit ``o_proj``/``down_proj`` by least squares on the kept inputs (else only slice).
        structured_damp: ridge λ of that refit, as a fraction of the mean diagonal of the Gram matrix.
        prune_kv_groups: remove whole key/value groups instead of query heads inside every group; None: only
            when each group has one query head (multi-head attention).
        head_sparsity: fraction of query heads (per group) or of groups to remove in every block; None: each
            block's own fraction, with MLP channels taking the rest of its share.
        bits: quantise the block weights to integers after (or jointly with) pruning, with this average bit
            width over the quantised weights (parameter-weighted, never exceeded); None: keep float weights.
            ``sparsity=0`` quantises without pruning. See docs/quantisation.md.
        group_size: inputs sharing one scale (default 128); None (or 0): one scale per output row. Symmetric
            scales, so every pruned weight stays exactly 0.
        weight_quant_method: ``gptq`` (OBS column updates that keep the pruning mask; with ``sparsegpt`` one
            joint sweep) or ``rtn`` (round to nearest). Not ``quant_method``, which transformers reads to pick
            the quantizer (``"alpha_pruning"``); the command line calls it ``--quant-method``.
        act_order: GPTQ visits the inputs by decreasing XᵀX diagonal, with every group's scale fixed before
            the sweep (groups stay runs of consecutive inputs, so the checkpoint needs no reordering index).
        quant_damp: GPTQ's dampening of XᵀX, as a fraction of its mean diagonal (default 0.1: on SmolLM2 W4,
            0.01 overfits 16 calibration windows; docs/quantisation.md). SparseGPT's joint sweep uses percdamp.
        joint_quantisation: with ``sparsegpt`` and ``gptq``, one sweep chooses the mask and rounds the kept
            weights (the SparseGPT paper's joint mode). Off by default: SparseGPT's float prune followed by GPTQ
            in activation order measured 111.0 against the joint sweep's 120.2 on SmolLM2 at 50 % + W4.
        bit_allocation: ``alpha`` (lower-α blocks get more bits) or ``uniform``; bit_choices: the widths to
            choose from (default 4 and 8, the ones vLLM serves).
    """

    # transformers reads it to pick the quantizer; not an __init__ argument, since it is not a choice.
    quant_method: str = field(default=QUANT_METHOD, init=False)

    sparsity: float = default("sparsity")
    method: str = default("method")
    allocation: str = default("allocation")
    metric: str = default("metric")
    epsilon: float | str = default("epsilon")
    epsilon_grid: tuple[float, ...] = default("epsilon_grid")
    heldout: int = default("heldout")
    max_sparsity: float = default("max_sparsity")
    granularity: str = default("granularity")
    fix_finger: str = default("fix_finger")
    esd_sampling: str = default("esd_sampling")
    farms_rows: int = default("farms_rows")
    farms_q_ratio: float = default("farms_q_ratio")
    farms_ops_per_dim: int = default("farms_ops_per_dim")
    calibration_dataset: Any = default("calibration_dataset")
    calibration_sampling: str = default("calibration_sampling")
    nsamples: int | None = default("nsamples")
    seqlen: int | None = default("seqlen")
    seed: int = default("seed")
    calibration_batch_tokens: int = default("calibration_batch_tokens")
    nm: str | None = default("nm")
    owl_threshold: float = default("owl_threshold")
    owl_lambda: float = default("owl_lambda")
    dlp_alpha: float = default("dlp_alpha")
    atp_beta: float | str = default("atp_beta")
    atp_beta_grid: tuple[float, ...] = default("atp_beta_grid")
    reconstruct: str = default("reconstruct")
    reconstruct_iters: int = default("reconstruct_iters")
    reconstruct_damp: float = default("reconstruct_damp")
    percdamp: float = default("percdamp")
    blocksize: int = default("blocksize")
    alps_rho: float = default("alps_rho")
    alps_max_iter: int = default("alps_max_iter")
    alps_pcg_iters: int = default("alps_pcg_iters")
    alps_pcg_tol: float = default("alps_pcg_tol")
    ignore: list[str] | None = default("ignore")
    prune_routers: bool = default("prune_routers")
    block_score: str = default("block_score")
    structure: str = default("structure")
    unstructured_sparsity: float | None = default("unstructured_sparsity")
    structured_refit: bool = default("structured_refit")
    structured_damp: float = default("structured_damp")
    prune_kv_groups: bool | None = default("prune_kv_groups")
    head_sparsity: float | None = default("head_sparsity")
    bits: float | None = default("bits")
    group_size: int | None = default("group_size")
    weight_quant_method: str = default("weight_quant_method")  # --quant-method; see options.py for the name
    act_order: bool = default("act_order")
    quant_damp: float = default("quant_damp")
    joint_quantisation: bool = default("joint_quantisation")
    bit_allocation: str = default("bit_allocation")
    bit_choices: tuple[int, ...] = default("bit_choices")
    tokenizer: Any = default("tokenizer")
    dataset: InitVar[Any] = None

    def __post_init__(self, dataset: Any = None) -> None:
        if dataset is not None:
            self.calibration_dataset = dataset
        check_field_types(self)
        self.method = str(self.method).lower()
        self.allocation = str(self.allocation).lower()
        get_pruner_class(self.method)  # an unknown name fails here, listing the registered ones
        allocation_cls = get_allocation(self.allocation)
        self.metric = canonical_metric(str(self.metric))
        if self.metric not in METRICS:
            raise ConfigError(f"Unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}.")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"Unknown granularity {self.granularity!r}; use 'block' or 'matrix'.")
        if self.fix_finger not in FIX_FINGERS:
            raise ConfigError(f"Unknown fix_finger {self.fix_finger!r}; use 'reference' or 'strict'.")
        check_esd_sampling(self.esd_sampling)
        self.farms_options  # validates the FARMS grid
        check_sparsity(float(self.sparsity), float(self.max_sparsity))
        self._check_epsilon()
        if self.calibration_sampling not in SAMPLINGS:
            raise ConfigError(
                f"Unknown calibration_sampling {self.calibration_sampling!r}; use 'document' or 'joined'."
            )
        if self.nsamples is not None and int(self.nsamples) < 1:
            raise ConfigError(f"nsamples must be >= 1, got {self.nsamples}.")
        if int(self.calibration_batch_tokens) < 1:
            raise ConfigError(f"calibration_batch_tokens must be >= 1, got {self.calibration_batch_tokens}.")
        if self.seqlen is not None and int(self.seqlen) < 1:
            raise ConfigError(f"seqlen must be >= 1 (or None for min(2048, max positions)), got {self.seqlen}.")
        parse_nm(self.nm)
        mixed = parse_mixed_nm(self.nm)
        if mixed is not None:
            check_mixed_sparsity(float(self.sparsity), mixed)
        for plugin in (*allocation_classes(), *pruner_classes()):  # each validates the fields it reads
            plugin.check_config(self)
        allocation_cls.check_chosen(self)
        if self.ignore is not None:
            if isinstance(self.ignore, str):
                self.ignore = [self.ignore]
            self.ignore = list(self.ignore)
            compile_patterns(self.ignore)
        if self.block_score not in BLOCK_SCORES:
            raise ConfigError(f"Unknown block_score {self.block_score!r}; use one of {', '.join(BLOCK_SCORES)}.")
        check_reconstruct(self.reconstruct, self.reconstruct_iters, float(self.reconstruct_damp))
        self.atp_beta_grid = tuple(float(b) for b in self.atp_beta_grid)  # a JSON list reads back as the tuple
        self._check_structure()
        check_quantization_config(self)

    @property
    def farms_options(self) -> FarmsOptions:
        """The FARMS sampling grid of ``esd_sampling="farms"``."""
        return FarmsOptions(self.farms_rows, self.farms_q_ratio, self.farms_ops_per_dim)

    def pruner_options(self, option_names: tuple[str, ...]) -> dict[str, Any]:
        """The config values a layer pruner declares in its ``options``."""
        return {name: getattr(self, name) for name in option_names}

    def _check_epsilon(self) -> None:
        if isinstance(self.epsilon, str) and self.epsilon.lower() == AUTO:
            self.epsilon = AUTO
        elif isinstance(self.epsilon, str):
            try:
                self.epsilon = float(self.epsilon)
            except ValueError as err:
                raise ConfigError(f"epsilon must be a number in [0, 1) or 'auto', got {self.epsilon!r}.") from err
        if self.epsilon != AUTO:
            check_epsilon(float(self.epsilon))
        self.epsilon_grid = tuple(float(e) for e in self.epsilon_grid)
        if not self.epsilon_grid:
            raise ConfigError("epsilon_grid is empty; give at least one ε, e.g. (0.1, 0.2, 0.3, 0.4, 0.5).")
        for value in self.epsilon_grid:
            check_epsilon(value)
        if int(self.heldout) < 1:
            raise ConfigError(f"heldout (windows scoring epsilon='auto') must be >= 1, got {self.heldout}.")

    @property
    def heldout_search(self) -> tuple[str, tuple[float, ...]] | None:
        """(field, grid) when the allocation's searched option is ``"auto"`` (ε of alpha, β of ATP), else None."""
        searched = get_allocation(self.allocation).searched_option
        if searched is None or getattr(self, searched[0]) != AUTO:
            return None
        return searched[0], tuple(getattr(self, searched[1]))

    @property
    def searches_epsilon(self) -> bool:
        """True for ``epsilon="auto"`` with an allocation that reads ε (the alpha allocation)."""
        return self.epsilon == AUTO and self.allocation == "alpha"

    def _check_structure(self) -> None:
        self.structure = str(self.structure).lower()
        if self.structure not in STRUCTURES:
            raise ConfigError(f"Unknown structure {self.structure!r}; choose one of {', '.join(STRUCTURES)}.")
        width_only = {"unstructured_sparsity": self.unstructured_sparsity, "head_sparsity": self.head_sparsity,
                      "prune_kv_groups": self.prune_kv_groups}
        if self.structure != "width":
            given = [name for name, value in width_only.items() if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} only apply with structure='width'; set structure='width'.")
            return
        if self.granularity != "block":
            raise ConfigError("structure='width' allocates per block; use granularity='block'.")
        if self.ignore:
            raise ConfigError("structure='width' removes heads and channels of whole blocks; drop ignore=.")
        if self.unstructured_sparsity is not None:
            check_sparsity(float(self.unstructured_sparsity), float(self.max_sparsity))
        if self.head_sparsity is not None and not 0.0 <= float(self.head_sparsity) < 1.0:
            raise ConfigError(f"head_sparsity must be in [0, 1) or None, got {self.head_sparsity}.")
        if not float(self.structured_damp) > 0:
            raise ConfigError(f"structured_damp must be > 0 (ridge of the refit), got {self.structured_damp}.")

    @property
    def needs_calibration_text(self) -> bool:
        """Whether the run reads calibration text (its layer pruner, allocation or width pruning does)."""
        return (get_pruner_class(self.method).needs_calibration or get_allocation(self.allocation).needs_calibration
                or self.structure == "width" or self.reconstruct == "block"
                or (self.bits is not None and self.weight_quant_method == "gptq"))

    @property
    def width_only(self) -> bool:
        """Width pruning with no unstructured/N:M stage after it (the one place this is decided)."""
        return self.structure == "width" and not self.sparsifies_after_width

    @property
    def sparsifies_after_width(self) -> bool:
        """Whether a width-pruned model is then pruned unstructured (or N:M), or quantised."""
        return self.structure == "width" and (self.unstructured_sparsity is not None or self.nm is not None
                                              or self.bits is not None)

    def unstructured_stage(self) -> "AlphaPruningConfig":
        """The config of the unstructured stage that follows width pruning."""
        from dataclasses import replace

        sparsity = self.unstructured_sparsity if self.unstructured_sparsity is not None else 0.0
        return replace(self, structure="unstructured", sparsity=sparsity, unstructured_sparsity=None,
                       head_sparsity=None, prune_kv_groups=None)

    @property
    def nm_pattern(self) -> tuple[int, int] | None:
        """(N, M) of a fixed pattern; None without one or for ``mixed:M``."""
        return parse_nm(self.nm)

    @property
    def nm_mixed_group(self) -> int | None:
        """M of a ``mixed:M`` pattern, else None."""
        return parse_mixed_nm(self.nm)

    @property
    def nm_group(self) -> int | None:
        """M of any N:M pattern (fixed or mixed), else None."""
        pattern = self.nm_pattern
        return pattern[1] if pattern else self.nm_mixed_group

    @property
    def sparsity_structure(self) -> str:
        """``"2:4"``, ``"mixed:8"`` or ``"unstructured"``: what config.json, the card and the CLI report."""
        pattern = self.nm_pattern
        if pattern is not None:
            return f"{pattern[0]}:{pattern[1]}"
        mixed = self.nm_mixed_group
        return f"{MIXED_NM_PREFIX}{mixed}" if mixed is not None else "unstructured"

    @property
    def effective_sparsity(self) -> float:
        """The sparsity the run aims at: 1 - N/M under a fixed N:M pattern (which overrides ``sparsity``)."""
        pattern = self.nm_pattern
        return 1.0 - pattern[0] / pattern[1] if pattern is not None else float(self.sparsity)

    def resolve_seqlen(self, max_positions: int | None) -> int:
        """The calibration window length for a model with ``max_positions`` positions."""
        return resolve_seqlen(self.seqlen, max_positions)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus ``quant_method``; objects (a Dataset, a tokenizer) become their type or name."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["epsilon_grid"] = list(self.epsilon_grid)
        data["bit_choices"] = list(self.bit_choices)
        data["atp_beta_grid"] = list(self.atp_beta_grid)
        data["calibration_dataset"] = _json_value(self.calibration_dataset)
        data["tokenizer"] = _json_value(self.tokenizer, getattr(self.tokenizer, "name_or_path", None))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        """Inverse of :meth:`to_dict` (also transformers' signature); unknown fields are an error."""
        data = {k: v for k, v in {**data, **kwargs}.items() if k != "quant_method"}
        known = {f.name for f in fields(cls) if f.init} | {"dataset"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"Unknown config field(s) {unknown}; valid fields: {', '.join(sorted(known))}.")
        config = cls(**data)
        return (config, {}) if return_unused_kwargs else config

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __deepcopy__(self, memo: dict) -> "AlphaPruningConfig":
        """transformers deep-copies the model config, ours included: share the tokenizer and dataset objects
        (every other field is an immutable value), rather than copying a tokenizer or an Arrow table."""
        return copy.copy(self)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "AlphaPruningConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"Config file {path} does not exist.") from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"Config file {path} is not valid UTF-8 JSON: {err}.") from err
        except OSError as err:
            raise ConfigError(f"Config file {path} cannot be read: {err}.") from err
        if not isinstance(data, dict):
            raise ConfigError(
                f"Config file {path} must hold a JSON object of AlphaPruningConfig fields, got {type(data).__name__}."
            )
        return cls.from_dict(data)


def _json_value(value: Any, name: str | None = None) -> Any:
    """A JSON stand-in for a config value: strings and None as they are, paths as text, objects by name/type."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return name or f"<{type(value).__name__}>"
