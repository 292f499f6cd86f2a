"""``prune``: the whole pipeline (load, ESD, allocate, prune, evaluate, save, push) with a final summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import (
    Stages,
    add_eval_arguments,
    add_model_arguments,
    add_output_arguments,
    check_device_map,
    check_model_limits,
    format_memory,
    format_table,
    load_kwargs,
    model_slug,
    peak_memory,
    positive_int,
)

NAME = "prune"
HELP = "prune a model with AlphaPruning allocation + Wanda/SparseGPT/ALPS/magnitude and save it"
DESCRIPTION = (
    "Load MODEL, measure the heavy-tailed spectrum (alpha) of every block, allocate the global sparsity\n"
    "over blocks (well-trained blocks, i.e. low alpha, are pruned less), prune each layer, optionally\n"
    "measure perplexity before and after, and save the pruned model (and push it to the Hub).\n"
    "Flags override the values of --config, which override the defaults below.\n\n"
    "example (about 2 minutes on a 2-core CPU):\n"
    "  optimum-cli alpha-prune prune smollm2-135m --sparsity 0.5 --method wanda --allocation alpha \\\n"
    "      --nsamples 32 --seqlen 512 --eval --eval-seqlen 512 --max-windows 20 \\\n"
    "      --output outputs/smollm2-135m-alpha-wanda-50"
)
# Choices and defaults mirror AlphaPruningConfig (checked by the tests): importing it would pull in torch
# while the parser is built, and `optimum-cli --help` must stay instant.
METHODS = ("wanda", "sparsegpt", "alps", "magnitude")
ALLOCATIONS = ("alpha", "owl", "uniform")
METRICS = ("alpha_hill", "alpha_hat", "stable_rank", "entropy", "frobenius_norm_sq", "spectral_norm_sq")
CONFIG_DEFAULTS: dict[str, Any] = {
    "sparsity": 0.5,
    "method": "wanda",
    "allocation": "alpha",
    "metric": "alpha_hill",
    "epsilon": 0.3,
    "epsilon_grid": [0.1, 0.2, 0.3, 0.4, 0.5],
    "heldout": 8,
    "max_sparsity": 0.99,
    "granularity": "block",
    "calibration_dataset": "c4",
    "calibration_sampling": "document",
    "nsamples": None,
    "seqlen": None,
    "seed": 0,
    "nm": None,
    "percdamp": 0.01,
    "blocksize": 128,
    "owl_threshold": 5.0,
    "owl_lambda": 0.08,
    "fix_finger": "reference",
    "ignore": None,
    "block_score": "mean",
    "alps_rho": 0.1,
    "alps_max_iter": 300,
    "alps_pcg_iters": 10,
    "alps_pcg_tol": 1e-4,
    "structure": "unstructured",
    "unstructured_sparsity": None,
    "structured_refit": True,
    "head_sparsity": None,
    "prune_kv_groups": None,
    "bits": None,
    "group_size": 128,
    "weight_quant_method": "gptq",
    "bit_allocation": "alpha",
    "bit_choices": [4, 8],
}
STRUCTURES = ("unstructured", "width")


def _config_flag(parser: argparse.ArgumentParser, flag: str, field: str, help: str, **kwargs: Any) -> None:
    """A flag backed by an AlphaPruningConfig field: None when absent, so --config values survive."""
    default = CONFIG_DEFAULTS[field]
    parser.add_argument(flag, dest=field, default=None, help=f"{help} (default: {default})", **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="start from this AlphaPruningConfig JSON (as written by to_json_file); flags override it",
    )
    _config_flag(parser, "--sparsity", "sparsity", "global fraction of block weights to remove, in [0, 1)",
                 type=float, metavar="S")
    _config_flag(parser, "--method", "method", "which weights go inside a layer", choices=METHODS)
    _config_flag(parser, "--allocation", "allocation",
                 "how sparsity is spread over blocks: alpha (AlphaPruning), owl (outliers) or uniform",
                 choices=ALLOCATIONS)
    _config_flag(parser, "--metric", "metric", "ESD metric that drives --allocation alpha", choices=METRICS)
    _config_flag(parser, "--epsilon", "epsilon",
                 "alpha allocation spread: block sparsities lie in [1-E, 1+E] times the target; 'auto' "
                 "prunes once per --epsilon-grid value, keeps the lowest perplexity on --heldout held-out "
                 "calibration-source windows (never the eval set) and prunes again: grid size + 1 prunes",
                 type=epsilon_value, metavar="E|auto")
    _config_flag(parser, "--epsilon-grid", "epsilon_grid", "the ε values tried by --epsilon auto",
                 type=float, nargs="+", metavar="E")
    _config_flag(parser, "--heldout", "heldout", "held-out windows scoring --epsilon auto",
                 type=positive_int, metavar="N")
    _config_flag(parser, "--max-sparsity", "max_sparsity", "no block gets more sparsity than this",
                 type=float, metavar="S")
    _config_flag(parser, "--granularity", "granularity", "allocate per block (paper) or per matrix",
                 choices=("block", "matrix"))
    _config_flag(parser, "--nm", "nm",
                 "semi-structured sparsity: N:M such as 2:4 (N kept per M weights, ignores --sparsity) or "
                 "mixed:M such as mixed:8 (each block gets its own N from --allocation)",
                 metavar="N:M|mixed:M")
    _config_flag(parser, "--structure", "structure",
                 "unstructured: zeros inside the weights; width: remove whole attention heads and MLP channels "
                 "(--sparsity of the block weights) for a smaller dense model", choices=STRUCTURES)
    _config_flag(parser, "--unstructured-sparsity", "unstructured_sparsity",
                 "with --structure width: then zero this fraction of the remaining weights with --method",
                 type=float, metavar="S")
    _config_flag(parser, "--head-sparsity", "head_sparsity",
                 "with --structure width: fraction of query heads per KV group (or of groups) removed in "
                 "every block; default: each block's own share", type=float, metavar="S")
    parser.add_argument("--prune-kv-groups", dest="prune_kv_groups", action="store_const", const=True,
                        default=None, help="with --structure width: remove whole key/value groups, not query "
                        "heads inside each group (default: off, except for multi-head attention)")
    parser.add_argument("--no-refit", dest="structured_refit", action="store_const", const=False, default=None,
                        help="with --structure width: only slice o_proj/down_proj, no least-squares refit (default: refit)")
    _config_flag(parser, "--bits", "bits",
                 "quantise the block weights to integers after pruning, with this average bit width "
                 "(never exceeded; e.g. 4, or 4.5 over --bit-choices); needs --format compressed-tensors; "
                 "--sparsity 0 quantises without pruning", type=float, metavar="B")
    _config_flag(parser, "--group-size", "group_size",
                 "inputs sharing one scale; 0 means one scale per output row", type=group_size_value, metavar="N")
    _config_flag(parser, "--quant-method", "weight_quant_method",
                 "gptq (keeps the pruning mask; one joint sweep with sparsegpt) or rtn (round to nearest)",
                 choices=("gptq", "rtn"))
    _config_flag(parser, "--bit-allocation", "bit_allocation",
                 "alpha: lower-alpha blocks get the wider widths; uniform: no preference", choices=("alpha", "uniform"))
    _config_flag(parser, "--bit-choices", "bit_choices", "bit widths to choose from", type=int, nargs="+",
                 metavar="B")
    _config_flag(parser, "--calibration", "calibration_dataset",
                 "calibration text: c4, wikitext2, or a .txt/.json/.jsonl/.parquet file with a 'text' field",
                 metavar="c4|wikitext2|PATH")
    _config_flag(parser, "--calibration-sampling", "calibration_sampling",
                 "document: each window inside one document longer than it, at a random offset (the "
                 "references); joined: documents joined and cut into consecutive windows (the fallback when "
                 "too few documents are long enough)", choices=("document", "joined"))
    _config_flag(parser, "--nsamples", "nsamples",
                 "number of calibration windows; default: the paper's 128, or as many as the source holds",
                 type=positive_int, metavar="N")
    _config_flag(parser, "--seqlen", "seqlen",
                 "tokens per calibration window (evaluation windows: --eval-seqlen); None means "
                 "min(2048, model max positions)", type=positive_int, metavar="N")
    _config_flag(parser, "--seed", "seed", "seed of the calibration sampling", type=int, metavar="N")
    _config_flag(parser, "--blocksize", "blocksize", "SparseGPT: columns pruned together", type=positive_int,
                 metavar="N")
    _config_flag(parser, "--owl-threshold", "owl_threshold",
                 "OWL's M: an activation is an outlier above M times its layer's mean", type=float, metavar="M")
    _config_flag(parser, "--owl-lambda", "owl_lambda", "OWL's lambda: block sparsities lie in target +- lambda",
                 type=float, metavar="L")
    _config_flag(parser, "--fix-finger", "fix_finger",
                 "xmin window of the Hill fit: reference (authors' code) or strict", choices=("reference", "strict"))
    _config_flag(parser, "--ignore", "ignore",
                 "keep matching block weights dense (repeatable): a module name or 're:REGEX', e.g. "
                 "--ignore 're:.*self_attn.*'; MoE routers are kept dense anyway",
                 action="append", metavar="PATTERN")
    _config_flag(parser, "--block-score", "block_score",
                 "a block's score from its matrices' metrics: mean (paper) or parameter-weighted",
                 choices=("mean", "weighted"))
    _config_flag(parser, "--percdamp", "percdamp",
                 "sparsegpt/alps: dampening added to XᵀX, as a fraction of its mean diagonal", type=float,
                 metavar="F")
    _config_flag(parser, "--alps-rho", "alps_rho", "alps: initial ADMM penalty ρ₀", type=float, metavar="R")
    _config_flag(parser, "--alps-max-iter", "alps_max_iter", "alps: most ADMM iterations per layer",
                 type=positive_int, metavar="N")
    _config_flag(parser, "--alps-pcg-iters", "alps_pcg_iters",
                 "alps: conjugate-gradient iterations refitting the kept weights (0: no refit)", type=int,
                 metavar="N")
    _config_flag(parser, "--alps-pcg-tol", "alps_pcg_tol", "alps: relative residual at which the refit stops",
                 type=float, metavar="T")
    add_output_arguments(parser, "the pruned model", "outputs/<model>-<allocation>-<method>-<sparsity %%>")
    parser.add_argument(
        "--force-overwrite",
        action="store_true",
        help="with an existing --output that is not a checkpoint written by optimum-alpha: replace the "
        "checkpoint files in it anyway (its other files are kept)",
    )
    parser.add_argument(
        "--format",
        choices=("sparse", "dense", "compressed-tensors"),
        default="sparse",
        help="sparse: compressed bitmask checkpoint; dense: plain safetensors any transformers can load; "
        "compressed-tensors: packed integer weights (with --bits) that transformers and vLLM load",
    )
    parser.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest safetensors shard, e.g. 500MB or 5GB",
    )
    parser.add_argument(
        "--push-to-hub", default=None, metavar="REPO",
        help="also upload the saved folder to this Hub repo id (token, repo id and offline mode are checked "
        "before the model is loaded)",
    )
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    parser.add_argument("--eval", action="store_true", help="measure perplexity before and after pruning")
    add_eval_arguments(parser)


def group_size_value(text: str) -> int:
    """--group-size: a whole number >= 1, or 0 for one scale per row (group_size=None in the config)."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number (0: one scale per row), got {text!r}") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def epsilon_value(text: str) -> float | str:
    """--epsilon: a number, or 'auto' for the held-out sweep."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'auto', got {text!r}") from err


def resolve_config(args: argparse.Namespace):
    """AlphaPruningConfig from --config (if any) with every given flag laid over it."""
    from ..configuration import AlphaPruningConfig
    from ..errors import ConfigError

    values = AlphaPruningConfig.from_json_file(args.config).to_dict() if args.config is not None else {}
    given = {field: getattr(args, field) for field in CONFIG_DEFAULTS}
    values.update({field: value for field, value in given.items() if value is not None})
    if values.get("group_size") == 0:  # --group-size 0: one scale per row
        values["group_size"] = None
    values.pop("quant_method", None)
    config = AlphaPruningConfig.from_dict(values)
    pattern = config.nm_pattern
    if pattern is not None and "sparsity" in values and abs(config.effective_sparsity - config.sparsity) > 1e-9:
        raise ConfigError(
            f"--sparsity {config.sparsity} contradicts --nm {config.nm}, which keeps {pattern[0]} of every "
            f"{pattern[1]} weights, i.e. sparsity {config.effective_sparsity:g}; drop --sparsity, or use "
            f"--nm mixed:{pattern[1]} to reach {config.sparsity} with a whole N per block"
        )
    return config


def run_label(config) -> str:
    """How the run is described everywhere (stage header, summary): sparsity, pattern, allocation, method."""
    structure = config.sparsity_structure
    if config.structure == "width" and not config.sparsifies_after_width:
        return f"{config.sparsity:.0%} of the block weights (width: heads and channels, {config.allocation} allocation)"
    if config.nm_pattern is not None:
        return f"{config.effective_sparsity:.0%} ({structure} pattern, {config.method})"
    pattern = f"{structure} pattern, " if structure != "unstructured" else ""
    return f"{config.effective_sparsity:.0%} ({pattern}{config.allocation} allocation, {config.method})"


def default_output(model: str, config) -> Path:
    """``outputs/<model>-<allocation>-<method>-<percent>`` (``...-2of4-magnitude-50`` for a fixed N:M pattern,
    ``...-alpha-wanda-mixed8-50`` for mixed N:M), named by the sparsity the run aims at."""
    percent = f"{config.effective_sparsity * 100:g}".replace(".", "p")
    if config.structure == "width" and not config.sparsifies_after_width:  # e.g. smollm2-135m-alpha-width-30
        return Path("outputs") / f"{model_slug(model)}-{config.allocation}-width-{percent}"
    pattern, mixed = config.nm_pattern, config.nm_mixed_group
    if pattern is not None:
        parts = [f"{pattern[0]}of{pattern[1]}", config.method]
    else:
        parts = [config.allocation, config.method] + ([f"mixed{mixed}"] if mixed else [])
    return Path("outputs") / "-".join([model_slug(model), *parts, percent])


def _perplexity(pruner, args: argparse.Namespace) -> float:
    from ..evaluate import perplexity

    return perplexity(pruner.model, pruner.tokenizer, dataset=args.eval_dataset, seqlen=args.eval_seqlen,
                      max_windows=args.max_windows, show_progress=not args.quiet)


def print_summary(report, config, ppl: dict[str, Any], output: Path, elapsed: float, memory: dict) -> None:
    """Per-block table and totals on stdout: the result a user reads after the progress bars."""
    score_name = {"alpha": config.metric, "owl": "outlier_ratio"}.get(config.allocation, "score")
    rows = [[b.index, b.score, b.target_sparsity, b.achieved_sparsity] for b in report.blocks]
    width_only = config.structure == "width" and not config.sparsifies_after_width
    print()
    if report.structured:
        print("Block widths kept (query heads, key/value heads, MLP channels) and share of block weights removed:")
        print(format_table(["block", "heads", "kv heads", "channels", "allocated", "removed"], [
            [s["index"], s["width"]["num_attention_heads"], s["width"]["num_key_value_heads"],
             s["width"]["intermediate_size"], s["target_fraction"], s["removed_fraction"]]
            for s in report.structured]))
    if width_only:
        print(f"block weights removed: {report.total_sparsity:.4f} (target {report.target_sparsity:.4f})")
    else:
        print(f"Pruned blocks to {run_label(config)}:")
        print(format_table(["block", score_name, "allocated", "achieved"], rows))
        # The target comes from the blocks, not config.sparsity, which an N:M pattern overrides.
        print(f"total sparsity: {report.total_sparsity:.4f} (target {report.target_sparsity:.4f}, "
              f"structure {report.sparsity_structure})")
        if report.pinned_blocks:
            print(f"warning: blocks {report.pinned_blocks} are pinned at the sparsity cap "
                  f"({config.max_sparsity}); the rest of their share went to other blocks")
    if report.ignored:
        print(f"kept dense on purpose: {len(report.ignored)} weights ({sum(report.ignored.values())} parameters); "
              f"sparsity over all block weights {report.block_weight_sparsity:.4f}")
    if report.uncalibrated:
        print(f"no calibration token reached {len(report.uncalibrated)} expert matrices; pruned by magnitude")
    if report.calibration:
        cal = report.calibration
        print(f"calibration: {cal.get('source', cal['dataset'])}, {cal['nsamples']} windows x {cal['seqlen']} "
              f"tokens ({cal.get('sampling', 'joined')} sampling)")
    if report.epsilon_search:
        search = report.epsilon_search
        sweep = ", ".join(f"{e:g} -> {p:.2f}" for e, p in zip(search["grid"], search["heldout_perplexity"]))
        print(f"epsilon auto: chose {search['chosen']:g} (held-out perplexity {sweep})")
    if ppl:
        before, after = ppl["dense"], ppl["pruned"]
        print(f"perplexity ({ppl['dataset']}, {ppl['windows']} windows x {ppl['seqlen']} tokens): "
              f"before {before:.3f}, after {after:.3f} ({after / before:.2f}x)")
    print(f"time: {elapsed:.1f} s, peak memory: {format_memory(memory)}")
    print(f"saved to: {output}")


def check_before_loading(args: argparse.Namespace):
    """Everything that can fail without the weights, in the order a user would fix it; returns the config,
    the output folder and the overwrite mode."""
    config = resolve_config(args)
    from ..checkpoint.save import check_save_request

    output = args.output if args.output is not None else default_output(args.model, config)
    overwrite = "force" if args.force_overwrite else args.overwrite
    check_save_request(output, format=args.format, max_shard_size=args.max_shard_size, overwrite=overwrite)
    from ..checkpoint.compressed_tensors import check_config_for_format

    check_config_for_format(config, args.format)
    check_device_map(args.device_map)
    from ..data import load_texts

    if isinstance(config.calibration_dataset, str):
        load_texts(config.calibration_dataset)  # a wrong name or path fails now, not after loading the model
    if args.eval:
        load_texts(args.eval_dataset)
    if args.push_to_hub:
        from ..checkpoint.hub import check_push_target

        check_push_target(args.push_to_hub)
    check_model_limits(args.model, load_kwargs(args),
                       {"--seqlen": config.seqlen, "--eval-seqlen": args.eval_seqlen if args.eval else None})
    return config, output, overwrite


def push_or_explain(folder: Path, repo: str, private: bool) -> str:
    """Push the saved folder; a failure keeps it and says how to retry the push alone."""
    from ..checkpoint import push_folder_to_hub
    from ..errors import CheckpointError

    try:
        return push_folder_to_hub(folder, repo, private=private or None)
    except CheckpointError as error:
        retry = f"optimum-cli alpha-prune push {folder} {repo}" + (" --private" if private else "")
        raise CheckpointError(f"{error}. The pruned model is saved in {folder}; retry the upload with: {retry}") from error


def run(args: argparse.Namespace) -> int:
    config, output, overwrite = check_before_loading(args)
    start = time.perf_counter()
    stages = Stages(3 + 2 * bool(args.eval) + bool(args.push_to_hub), quiet=args.quiet)
    show = not args.quiet
    with stages.stage(f"Loading {args.model}"):
        from ..pruner import AlphaPruner

        pruner = AlphaPruner.from_pretrained(args.model, show_progress=show, **load_kwargs(args))
    from ..checkpoint.compressed_tensors import check_model_for_format

    check_model_for_format(pruner.block_weights(config), args.format)  # before any slow work on the weights
    ppl: dict[str, Any] = {}
    if args.eval:
        from ..evaluate import evaluation_protocol

        ppl.update(evaluation_protocol(pruner.model, pruner.tokenizer, args.eval_dataset, args.eval_seqlen,
                                       args.max_windows))
        with stages.stage(f"Perplexity of the dense model ({ppl['dataset']}, {ppl['windows']} windows)"):
            ppl["dense"] = _perplexity(pruner, args)
        print(f"perplexity before pruning: {ppl['dense']:.3f}", flush=True)
    with stages.stage(f"Pruning to {run_label(config)}"):
        _, report = pruner.prune(config, show_progress=show)
    if args.eval:
        with stages.stage("Perplexity of the pruned model"):
            ppl["pruned"] = _perplexity(pruner, args)
        pruner.perplexity.update(ppl)
    with stages.stage(f"Saving to {output} ({args.format})"):
        pruner.save_pretrained(output, format=args.format, max_shard_size=args.max_shard_size,
                               overwrite=overwrite)
    print_summary(report, config, ppl, output, time.perf_counter() - start, peak_memory())
    if args.push_to_hub:
        with stages.stage(f"Pushing to the Hub: {args.push_to_hub}"):
            url = push_or_explain(output, args.push_to_hub, args.private)
        print(f"pushed to: {url}")
    return 0
