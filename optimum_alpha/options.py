"""Every option of a pruning run, once: name, default, kind, choices, help and command-line flag.

This module is the one source the config (:class:`~optimum_alpha.AlphaPruningConfig` takes its defaults
here), the command line (both entry points generate their flags from :data:`OPTIONS`), ``setup.cfg``'s
summary and the option table of docs/cli.md read. It imports neither torch nor transformers, so ``--help``
stays instant. Choices that are registries (layer pruners, allocations, checkpoint writers) are read from
the plug-in files themselves (:mod:`optimum_alpha.plugins`), so adding a plug-in never edits this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .plugins import declared_names

SUMMARY = (
    "AlphaPruning for Hugging Face LLMs: heavy-tailed layer-wise sparsity allocation with pluggable layer "
    "pruners, allocations and checkpoint formats"
)

METRICS = ("alpha_hill", "alpha_hat", "stable_rank", "entropy", "frobenius_norm_sq", "spectral_norm_sq")
METRIC_ALIASES = {"frobenius_norm": "frobenius_norm_sq", "spectral_norm": "spectral_norm_sq"}
GRANULARITIES = ("block", "matrix")
FIX_FINGERS = ("reference", "strict")
SAMPLINGS = ("document", "joined")
BLOCK_SCORES = ("mean", "weighted")
ESD_SAMPLINGS = ("full", "farms")
STRUCTURES = ("unstructured", "width")
AUTO = "auto"
DEFAULT_MAX_SEQLEN = 2048  # calibration windows never default to the model's full context
MIXED_NM_PREFIX = "mixed:"
QUANT_METHODS = ("gptq", "rtn")
BIT_ALLOCATIONS = ("alpha", "uniform")


def pruner_names() -> tuple[str, ...]:
    """Layer pruners, from the ``@register_pruner`` declarations in optimum_alpha/pruning/."""
    return declared_names("optimum_alpha.pruning", "register_pruner")


def allocation_names() -> tuple[str, ...]:
    """Allocations, from the ``@register_allocation`` declarations in optimum_alpha/allocations/."""
    return declared_names("optimum_alpha.allocations", "register_allocation")


def format_names() -> tuple[str, ...]:
    """Checkpoint writers, from the ``@register_writer`` declarations in optimum_alpha/checkpoint/writers/."""
    return declared_names("optimum_alpha.checkpoint.writers", "register_writer")


REGISTRY_CHOICES = {"pruners": pruner_names, "allocations": allocation_names, "formats": format_names}


@dataclass(frozen=True)
class Option:
    """One config field and its flag.

    ``kind`` says how the command line parses it: ``float``, ``int``, ``count`` (an int >= 1), ``str``,
    ``choice``, ``epsilon`` (a number or ``auto``), ``floats`` (one or more numbers), ``patterns``
    (repeatable), ``flag_on`` (present = True) or ``flag_off`` (present = False). ``choices`` is a tuple or
    the name of a registry in :data:`REGISTRY_CHOICES`. ``flag=None`` keeps the field off the command line
    (``cli_note`` says why).
    """

    name: str
    default: Any
    kind: str
    help: str
    group: str
    choices: tuple[str, ...] | str | None = None
    flag: str | None = ""
    metavar: str | None = None
    cli_note: str = ""

    @property
    def cli_flag(self) -> str | None:
        if self.flag is None:
            return None
        return self.flag or "--" + self.name.replace("_", "-")

    def choice_values(self) -> tuple[str, ...] | None:
        if isinstance(self.choices, str):
            return REGISTRY_CHOICES[self.choices]()
        return self.choices


OPTIONS: tuple[Option, ...] = (
    # what goes
    Option("sparsity", 0.5, "float", "global fraction of prunable block weights to remove, in [0, 1)", "pruning",
           metavar="S"),
    Option("method", "wanda", "choice", "which weights go inside a layer", "pruning", choices="pruners"),
    Option("nm", None, "str", "semi-structured sparsity: N:M such as 2:4 (N kept per M weights, sets the "
           "sparsity) or mixed:M such as mixed:8 (each block gets its own N from the allocation)", "pruning",
           metavar="N:M|mixed:M"),
    Option("ignore", None, "patterns", "keep matching block weights dense (repeatable): a module name or "
           "'re:REGEX', e.g. 're:.*self_attn.*'; MoE routers are kept dense anyway", "pruning",
           metavar="PATTERN"),
    Option("prune_routers", False, "flag_on", "prune MoE router weights like any matrix (default: dense)",
           "pruning"),
    # how it is spread
    Option("allocation", "alpha", "choice", "how sparsity is spread over blocks", "allocation",
           choices="allocations"),
    Option("metric", "alpha_hill", "choice", "ESD metric that drives the alpha allocation", "allocation",
           choices=METRICS),
    Option("epsilon", 0.3, "epsilon", "alpha allocation spread: block sparsities lie in [1-E, 1+E] times the "
           "target; 'auto' prunes once per epsilon-grid value, keeps the lowest perplexity on held-out "
           "calibration-source windows (never the eval set) and prunes again", "allocation",
           metavar="E|auto"),
    Option("epsilon_grid", (0.1, 0.2, 0.3, 0.4, 0.5), "floats", "the epsilon values tried by epsilon auto",
           "allocation", metavar="E"),
    Option("heldout", 8, "count", "held-out windows scoring epsilon auto", "allocation", metavar="N"),
    Option("max_sparsity", 0.99, "float", "no block gets more sparsity than this; the rest is redistributed",
           "allocation", metavar="S"),
    Option("granularity", "block", "choice", "allocate per block (paper) or per matrix", "allocation",
           choices=GRANULARITIES),
    Option("fix_finger", "reference", "choice", "xmin window of the Hill fit: reference (authors' code) or "
           "strict", "allocation", choices=FIX_FINGERS),
    Option("esd_sampling", "full", "choice", "ESD of each whole matrix (full) or FARMS: eigenvalues of "
           "fixed-aspect-ratio windows on a grid, pooled (removes the aspect-ratio bias of alpha)", "allocation",
           choices=ESD_SAMPLINGS),
    Option("farms_rows", 100, "count", "with esd-sampling farms: rows of every sampled window", "allocation",
           metavar="N"),
    Option("farms_q_ratio", 2.0, "float", "with esd-sampling farms: columns per row of every window",
           "allocation", metavar="Q"),
    Option("farms_ops_per_dim", 10, "count", "with esd-sampling farms: window starts per dimension",
           "allocation", metavar="N"),
    Option("block_score", "mean", "choice", "a block's score from its matrices' metrics: mean (paper) or "
           "parameter-weighted", "allocation", choices=BLOCK_SCORES),
    Option("owl_threshold", 5.0, "float", "OWL's M: an activation is an outlier above M times its layer's mean",
           "allocation", metavar="M"),
    Option("owl_lambda", 0.08, "float", "OWL's lambda: block sparsities lie in target +- lambda", "allocation",
           metavar="L"),
    Option("dlp_alpha", 0.15, "float", "DLP's alpha: block sparsities lie in target +- alpha", "allocation",
           metavar="A"),
    Option("atp_beta", "auto", "epsilon", "ATP's step between the sparsities of consecutive blocks; 'auto' prunes "
           "once per atp-beta-grid value, keeps the lowest held-out perplexity and prunes again", "allocation",
           metavar="B|auto"),
    Option("atp_beta_grid", (0.0025, 0.005, 0.0075, 0.01, 0.0125), "floats", "the beta values tried by atp-beta "
           "auto", "allocation", metavar="B"),
    # calibration
    Option("calibration_dataset", "c4", "str", "calibration text: c4, wikitext2, or a .txt/.json/.jsonl/.parquet "
           "file with a 'text' field", "calibration", flag="--calibration", metavar="c4|wikitext2|PATH"),
    Option("calibration_sampling", "document", "choice", "document: each window inside one document longer "
           "than it, at a random offset (the references); joined: documents joined and cut into consecutive "
           "windows", "calibration", choices=SAMPLINGS),
    Option("nsamples", None, "count", "number of calibration windows; default: the paper's 128, or as many as "
           "the source holds", "calibration", metavar="N"),
    Option("seqlen", None, "count", "tokens per calibration window; default min(2048, model max positions)",
           "calibration", metavar="N"),
    Option("seed", 0, "int", "seed of the calibration sampling", "calibration", metavar="N"),
    Option("calibration_batch_tokens", 4096, "count", "tokens per block forward over the calibration windows: "
           "as many whole windows as fit (at least one) run together; lower it if activations do not fit",
           "calibration", metavar="N"),
    Option("tokenizer", None, "str", "tokenizer for pruning inside from_pretrained", "calibration", flag=None,
           cli_note="the command line calibrates with the model's own tokenizer"),
    # layer solvers
    Option("percdamp", 0.01, "float", "sparsegpt/alps: dampening added to XᵀX, as a fraction of its mean "
           "diagonal", "solver", metavar="F"),
    Option("blocksize", 128, "count", "sparsegpt: columns pruned together", "solver", metavar="N"),
    Option("alps_rho", 0.1, "float", "alps: initial ADMM penalty rho0", "solver", metavar="R"),
    Option("alps_max_iter", 300, "count", "alps: most ADMM iterations per layer", "solver", metavar="N"),
    Option("alps_pcg_iters", 10, "int", "alps: conjugate-gradient iterations refitting the kept weights "
           "(0: no refit)", "solver", metavar="N"),
    Option("alps_pcg_tol", 1e-4, "float", "alps: relative residual at which the refit stops", "solver",
           metavar="T"),
    Option("reconstruct", "none", "choice", "block: after each block is pruned, refit its kept weights (mask "
           "fixed) so that it reproduces the dense block on the calibration inputs", "solver",
           choices=("none", "block")),
    Option("reconstruct_iters", 20, "count", "block reconstruction: conjugate-gradient steps per matrix", "solver",
           metavar="N"),
    Option("reconstruct_damp", 0.01, "float", "block reconstruction: ridge, as a fraction of the mean diagonal of "
           "XᵀX", "solver", metavar="F"),
    # width pruning
    Option("structure", "unstructured", "choice", "unstructured: zeros inside the weights; width: remove whole "
           "attention heads and MLP channels for a smaller dense model", "width", choices=STRUCTURES),
    Option("unstructured_sparsity", None, "float", "with structure width: then zero this fraction of the "
           "remaining weights with the method", "width", metavar="S"),
    Option("structured_refit", True, "flag_off", "with structure width: only slice o_proj/down_proj, no "
           "least-squares refit (default: refit)", "width", flag="--no-refit"),
    Option("structured_damp", 0.01, "float", "with structure width: ridge of the least-squares refit, as a "
           "fraction of the mean diagonal of the Gram matrix", "width", metavar="F"),
    Option("prune_kv_groups", None, "flag_on", "with structure width: remove whole key/value groups, not query "
           "heads inside each group (default: off, except for multi-head attention)", "width"),
    Option("head_sparsity", None, "float", "with structure width: fraction of query heads per KV group (or of "
           "groups) removed in every block; default: each block's own share", "width", metavar="S"),
    # integer weights (docs/quantisation.md)
    Option("bits", None, "float", "quantise the block weights to integers after pruning, with this average bit "
           "width over them (never exceeded; e.g. 4, or 4.5 over bit-choices 4 8); needs format "
           "compressed-tensors; sparsity 0 quantises without pruning", "quantisation", metavar="B"),
    Option("group_size", 128, "int", "inputs sharing one scale (must divide every matrix's inputs); 0: one "
           "scale per output row", "quantisation", metavar="N"),
    # Not ``quant_method``: transformers reads that attribute of every quantization config to pick the
    # quantizer (ours is "alpha_pruning"), so the weight quantiser's field needs a name of its own.
    Option("weight_quant_method", "gptq", "choice", "gptq (keeps the pruning mask; after the pruner, or in its "
           "sweep with --joint-quantisation) or rtn (round to nearest)", "quantisation", flag="--quant-method",
           choices=QUANT_METHODS),
    Option("act_order", True, "flag_off", "gptq: visit the inputs in their own order, not by decreasing XᵀX "
           "diagonal (default: activation order, every group's scale fixed before the sweep)", "quantisation",
           flag="--no-act-order"),
    Option("quant_damp", 0.1, "float", "gptq: dampening added to XᵀX before the rounding sweep, as a fraction "
           "of its mean diagonal (sparsegpt's joint sweep uses percdamp)", "quantisation", metavar="F"),
    Option("joint_quantisation", False, "flag_on", "sparsegpt + gptq: choose the mask and round the kept weights "
           "in one sweep, the SparseGPT paper's joint mode; off: SparseGPT prunes, then GPTQ rounds "
           "(default: off)", "quantisation"),
    Option("bit_allocation", "alpha", "choice", "alpha: lower-alpha blocks get the wider widths; uniform: no "
           "preference (a budget between two widths is spread evenly over the depth)", "quantisation",
           choices=BIT_ALLOCATIONS),
    Option("bit_choices", (4, 8), "floats", "the bit widths to choose from (2 to 8; vLLM serves 4 and 8)",
           "quantisation", metavar="B"),
)

BY_NAME = {option.name: option for option in OPTIONS}

# ---- recovery after pruning: the fields of RecoveryConfig and the flags of `alpha-prune recover`
RECOVERY_OBJECTIVES = ("kd", "lm", "mix")
RECOVERY_METHODS = ("full", "lora")
LR_SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup")

RECOVERY_OPTIONS: tuple[Option, ...] = (
    Option("objective", "kd", "choice", "kd: KL to the dense teacher's next-token distribution; lm: next-token "
           "loss on the data; mix: kd-weight x KD + (1 - kd-weight) x LM", "objective", choices=RECOVERY_OBJECTIVES),
    Option("temperature", 1.0, "float", "KD temperature T (the KL is scaled by T squared)", "objective", metavar="T"),
    Option("kd_weight", 0.5, "float", "with objective mix: the share of the KD term", "objective", metavar="W"),
    Option("hidden_mse_weight", 0.0, "float", "weight of a per-block hidden-state MSE to the teacher (0: off)",
           "objective", flag="--hidden-mse", metavar="W"),
    Option("method", "full", "choice", "full: every kept weight trains, pruned ones stay 0; lora: peft adapters, "
           "merged back, pruned weights set to 0 again", "training", choices=RECOVERY_METHODS),
    Option("steps", 200, "count", "optimizer steps (each sees batch-size x grad-accum windows)", "training",
           metavar="N"),
    Option("learning_rate", None, "float", "peak learning rate; default 2e-4 (full) or 5e-4 (lora)", "training",
           flag="--lr", metavar="LR"),
    Option("warmup_steps", None, "int", "linear warm-up steps; default 5 percent of the steps (at least 1)", "training",
           metavar="N"),
    Option("lr_schedule", "cosine", "choice", "learning-rate schedule after the warm-up", "training",
           choices=LR_SCHEDULES),
    Option("weight_decay", 0.0, "float", "AdamW weight decay", "training", metavar="F"),
    Option("max_grad_norm", 1.0, "float", "gradient clipping norm (0: off)", "training", metavar="F"),
    Option("batch_size", 1, "count", "windows per micro-batch", "training", metavar="N"),
    Option("gradient_accumulation", 1, "count", "micro-batches per optimizer step", "training",
           flag="--grad-accum", metavar="N"),
    Option("seqlen", 512, "count", "tokens per training window", "training", metavar="N"),
    Option("seed", 0, "int", "data order seed", "training", metavar="N"),
    Option("train_routers", False, "flag_on", "let MoE routers train (default: frozen)", "training"),
    Option("log_steps", 1, "count", "record the loss every N steps", "training", metavar="N"),
    Option("lora_targets", None, "str", "with method lora: comma-separated module names for adapters; default "
           "every prunable Linear in the blocks (routers excluded)", "lora", metavar="NAMES"),
    Option("lora_experts", False, "flag_on", "with method lora: adapters on fused MoE expert parameters too (default: off)",
           "lora"),
    Option("lora_rank", 16, "count", "LoRA rank r", "lora", metavar="R"),
    Option("lora_alpha", 32.0, "float", "LoRA alpha (the update is scaled by alpha / r)", "lora", metavar="A"),
    Option("lora_dropout", 0.0, "float", "dropout on the adapters' input", "lora", metavar="P"),
    Option("dataset", "c4", "str", "c4 (the shipped sample minus the calibration documents), a "
           ".txt/.json/.jsonl/.parquet file, or a datasets Hub id", "data", metavar="SRC"),
    Option("dataset_config", None, "str", "the datasets configuration name of a Hub id", "data", metavar="NAME"),
    Option("dataset_split", "train", "str", "the split of a Hub id", "data", metavar="SPLIT"),
    Option("output_dir", None, "str", "Trainer checkpoints; default OUTPUT.recovery, deleted once the run "
           "completes", "checkpoints", flag="--checkpoint-dir", metavar="DIR"),
    Option("save_steps", 50, "count", "a resumable checkpoint every N steps (and one on Ctrl-C)", "checkpoints",
           metavar="N"),
    Option("resume", False, "flag_on", "continue from the last checkpoint in --checkpoint-dir (default: off)", "checkpoints"),
    Option("evaluate", True, "flag_off", "skip the perplexity before and after (default: measured)", "evaluation",
           flag="--no-eval"),
    Option("eval_dataset", "wikitext2", "str", "evaluation text", "evaluation", metavar="NAME"),
    Option("eval_seqlen", 512, "count", "tokens per evaluation window", "evaluation", metavar="N"),
    Option("eval_windows", 20, "count", "evaluation windows (the demo's protocol: 20 x 512)", "evaluation",
           flag="--max-windows", metavar="N"),
)

RECOVERY_BY_NAME = {option.name: option for option in RECOVERY_OPTIONS}


def recovery_default(name: str) -> Any:
    """The default of recovery option ``name`` (RecoveryConfig and `alpha-prune recover` both use it)."""
    return RECOVERY_BY_NAME[name].default



def default(name: str) -> Any:
    """The default of option ``name`` (what the config and the command line both use)."""
    return BY_NAME[name].default


def canonical_metric(name: str) -> str:
    """Old metric names (``frobenius_norm``, ``spectral_norm``) map to the squared-norm names."""
    return METRIC_ALIASES.get(name, name)


def resolve_seqlen(seqlen: int | None, max_positions: int | None, flag: str = "seqlen") -> int:
    """The one window-length rule (calibration and evaluation): None means min(2048, the model's positions),
    never the full context; a longer request than the model's positions is refused."""
    limit = max_positions or DEFAULT_MAX_SEQLEN
    if seqlen is None:
        return min(DEFAULT_MAX_SEQLEN, limit)
    if max_positions is not None and seqlen > max_positions:
        raise ConfigError(
            f"{flag} {seqlen} exceeds the model's maximum positions ({max_positions}); use {flag} <= {max_positions}."
        )
    return int(seqlen)


def markdown_table(options: tuple[Option, ...] = OPTIONS) -> str:
    """The option table of docs/cli.md, or of docs/recovery.md for ``RECOVERY_OPTIONS`` (tests keep the docs
    equal to these)."""
    lines = ["| flag | config field | default | choices / values | what it does |", "| --- | --- | --- | --- | --- |"]
    for option in options:
        choices = option.choice_values()
        values = ", ".join(choices) if choices else option.metavar or ""
        flag = f"`{option.cli_flag}`" if option.cli_flag else f"(none: {option.cli_note})"
        default_text = "None" if option.default is None else str(option.default)
        lines.append(f"| {flag} | `{option.name}` | {default_text} | {values} | {option.help} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m optimum_alpha.options [recovery]: the table for docs/cli.md (recovery.md)
    import sys

    print(markdown_table(RECOVERY_OPTIONS if sys.argv[1:] == ["recovery"] else OPTIONS))
