"""``prune``: the whole pipeline (load, ESD, allocate, prune, evaluate, save, push) with a final summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..options import format_names
from .evaluate import add_zero_shot_arguments, print_zero_shot
from .common import (
    Stages,
    add_eval_arguments,
    add_model_arguments,
    add_output_arguments,
    add_push_timeout_argument,
    check_device_map,
    check_model_limits,
    format_memory,
    format_table,
    load_kwargs,
    model_slug,
    peak_memory,
)
from .config_flags import add_config_flags, given_values

NAME = "prune"
HELP = "prune a model with a spectral (alpha), OWL or uniform allocation and a layer pruner, and save it"
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="start from this AlphaPruningConfig JSON (as written by to_json_file); flags override it",
    )
    add_config_flags(parser)  # one flag per AlphaPruningConfig field, generated from optimum_alpha.options
    add_output_arguments(parser, "the pruned model", "outputs/<model>-<allocation>-<method>-<sparsity %%>")
    parser.add_argument(
        "--force-overwrite",
        action="store_true",
        help="with an existing --output that is not a checkpoint written by optimum-alpha: replace the "
        "checkpoint files in it anyway (its other files are kept)",
    )
    parser.add_argument(
        "--format",
        choices=format_names(),
        default="sparse",
        help="checkpoint format: sparse (compressed bitmask, loads after `import optimum_alpha`), dense "
        "(plain safetensors any transformers loads), or another registered writer",
    )
    parser.add_argument(
        "--gguf-type",
        default="q8_0",
        metavar="TYPE",
        help="with --format gguf: f16, bf16, q8_0, q5_0, q4_0 or auto:B (bits per weight chosen from the spectra)",
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
    add_push_timeout_argument(parser, "--push-timeout")
    parser.add_argument("--eval", action="store_true",
                        help="measure perplexity before and after pruning, KL divergence of the pruned to the dense "
                        "model on the same windows, and the block spectra (alpha) after pruning")
    add_eval_arguments(parser)
    add_zero_shot_arguments(parser)


def resolve_config(args: argparse.Namespace):
    """AlphaPruningConfig from --config (if any) with every given flag laid over it."""
    from ..configuration import AlphaPruningConfig
    from ..errors import ConfigError

    values = {}
    if args.config is not None:
        loaded = AlphaPruningConfig.from_json_file(args.config)
        if loaded.tokenizer is not None:  # the command line calibrates with the model's own tokenizer
            raise ConfigError(
                f"--config {args.config} sets tokenizer={loaded.tokenizer!r}, which the command line does not use "
                "(it calibrates with the model's own tokenizer); remove the key, or prune from Python with "
                "AlphaPruner.from_pretrained(model, tokenizer=...)"
            )
        values = loaded.to_dict()
    values.update(given_values(args))
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
    if config.width_only:
        return f"{config.sparsity:.0%} of the block weights (width: heads and channels, {config.allocation} allocation)"
    if config.nm_pattern is not None:
        return f"{config.effective_sparsity:.0%} ({structure} pattern, {config.method})"
    pattern = f"{structure} pattern, " if structure != "unstructured" else ""
    return f"{config.effective_sparsity:.0%} ({pattern}{config.allocation} allocation, {config.method})"


def default_output(model: str, config) -> Path:
    """``outputs/<model>-<allocation>-<method>-<percent>`` (``...-2of4-magnitude-50`` for a fixed N:M pattern,
    ``...-alpha-wanda-mixed8-50`` for mixed N:M), named by the sparsity the run aims at."""
    percent = f"{config.effective_sparsity * 100:g}".replace(".", "p")
    if config.width_only:  # e.g. smollm2-135m-alpha-width-30
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


def print_evaluation(evaluation: dict[str, Any]) -> None:
    """KL divergence to the dense model and the mean block metric before/after, when measured."""
    kl = evaluation.get("kl")
    if kl:
        print(f"KL divergence to the dense model: mean {kl['kl_mean']:.6f}, median {kl['kl_median']:.6f}, "
              f"p99 {kl['kl_p99']:.6f} nats/token; top-1 agreement {kl['top1_agreement']:.4f}")
    elif evaluation.get("kl_skipped"):
        print(f"KL divergence not measured: {evaluation['kl_skipped']}")
    spectra = evaluation.get("spectra")
    if spectra:
        print(f"mean block {spectra['metric']}: before pruning {spectra['mean_before']:.4f}, "
              f"after {spectra['mean_after']:.4f}")


def print_summary(report, config, ppl: dict[str, Any], output: Path, elapsed: float, memory: dict,
                  evaluation: dict[str, Any] | None = None) -> None:
    """Per-block table and totals on stdout: the result a user reads after the progress bars."""
    score_name = report.score_name
    rows = [[b.index, b.score, b.target_sparsity, b.achieved_sparsity] for b in report.blocks]
    width_only = report.width_only
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
    if report.quantization:
        q = report.quantization
        print(f"quantised ({q['method']}): {q['average_bits']:.3f} bits per weight on average (budget "
              f"{q['bits_budget']:g}), {q['bits_per_weight_with_scales']:.3f} with scales; widths "
              f"{', '.join(str(b) for b in sorted(set(q['bits'].values())))}")
    if report.calibration:
        cal = report.calibration
        print(f"calibration: {cal.get('source', cal['dataset'])}, {cal['nsamples']} windows x {cal['seqlen']} "
              f"tokens ({cal.get('sampling', 'joined')} sampling)")
    if report.epsilon_search:
        search = report.epsilon_search
        sweep = ", ".join(f"{e:g} -> {p:.2f}" for e, p in zip(search["grid"], search["heldout_perplexity"]))
        name = "atp beta" if search.get("parameter") == "atp_beta" else "epsilon"
        print(f"{name} auto: chose {search['chosen']:g} (held-out perplexity {sweep})")
    if ppl:
        before, after = ppl["dense"], ppl["pruned"]
        print(f"perplexity ({ppl['dataset']}, {ppl['windows']} windows x {ppl['seqlen']} tokens): "
              f"before {before:.3f}, after {after:.3f} ({after / before:.2f}x)")
    print_evaluation(evaluation or {})
    print(f"time: {elapsed:.1f} s, peak memory: {format_memory(memory)}")
    print(f"saved to: {output}")


def check_before_loading(args: argparse.Namespace):
    """Everything that can fail without the weights, in the order a user would fix it; returns the config,
    the output folder and the overwrite mode."""
    config = resolve_config(args)
    from ..checkpoint.save import check_save_request

    output = args.output if args.output is not None else default_output(args.model, config)
    overwrite = "force" if args.force_overwrite else args.overwrite
    check_save_request(output, format=args.format, max_shard_size=args.max_shard_size, overwrite=overwrite,
                       config=config, **writer_options(args))  # e.g. --bits without compressed-tensors
    check_device_map(args.device_map)
    from ..data import load_texts

    if isinstance(config.calibration_dataset, str):
        load_texts(config.calibration_dataset)  # a wrong name or path fails now, not after loading the model
    if args.eval:
        load_texts(args.eval_dataset)
    if args.tasks is not None:
        from ..evaluation.zero_shot import prepare_tasks

        args.prepared_tasks = prepare_tasks(args.tasks)  # extra installed, files readable, names registered
    if args.push_to_hub:
        from ..checkpoint.hub import check_push_target

        check_push_target(args.push_to_hub)
    check_model_limits(args.model, load_kwargs(args),
                       {"--seqlen": config.seqlen, "--eval-seqlen": args.eval_seqlen if args.eval else None})
    return config, output, overwrite


def push_or_explain(folder: Path, repo: str, private: bool, timeout: float) -> str:
    """Push the saved folder; a failure keeps it and says how to retry the push alone."""
    from ..checkpoint import push_folder_to_hub
    from ..errors import CheckpointError

    from ..checkpoint.hub import retry_command

    try:
        return push_folder_to_hub(folder, repo, private=private or None, timeout=timeout)
    except CheckpointError as error:
        retry = retry_command(folder, repo, private, timeout)
        if retry in str(error):  # a time-out already says how to push again
            raise
        raise CheckpointError(f"{error}. The pruned model is saved in {folder}; retry the upload with: {retry}") from error


def writer_options(args: argparse.Namespace) -> dict[str, str]:
    """The save options of the chosen format (only ``gguf`` has one)."""
    return {"gguf_type": args.gguf_type} if args.format == "gguf" else {}


def _measure_dense(pruner, config, args: argparse.Namespace, ppl: dict[str, Any]):
    """Before pruning: the ESD analysis (reused by the alpha allocation) and one pass over the evaluation
    windows giving the dense perplexity and what the KL divergence needs afterwards (None when this model's
    logits cannot be recomputed; the reason goes into ``pruner.evaluation``)."""
    from ..errors import ConfigError
    from ..evaluation.kl import DenseReference

    pruner.analyze(fix_finger=config.fix_finger, show_progress=not args.quiet, block_score=config.block_score,
                   config=config)
    try:
        dense = DenseReference.capture(pruner.model, pruner.tokenizer, args.eval_dataset, args.eval_seqlen,
                                       args.max_windows, show_progress=not args.quiet)
    except ConfigError as error:
        pruner.evaluation["kl_skipped"] = str(error)
        ppl["dense"] = _perplexity(pruner, args)
        return None
    ppl["dense"] = dense.perplexity
    return dense


def _measure_pruned(pruner, dense, args: argparse.Namespace, ppl: dict[str, Any], before) -> None:
    """After pruning: perplexity and KL divergence on the same windows, and the block spectra again."""
    from ..evaluation.spectra import spectra_after_pruning

    if dense is not None:
        kl = dense.compare(pruner.model, show_progress=not args.quiet)
        ppl["pruned"] = kl.perplexity
        pruner.evaluation["kl"] = kl.to_dict()
    else:
        ppl["pruned"] = _perplexity(pruner, args)
    metric = pruner.last_report.config.get("metric") or "alpha_hill"
    _, spectra = spectra_after_pruning(pruner.model, before, metric, show_progress=not args.quiet)
    pruner.evaluation["spectra"] = spectra.to_dict()


def run(args: argparse.Namespace) -> int:
    config, output, overwrite = check_before_loading(args)
    start = time.perf_counter()
    prepared = getattr(args, "prepared_tasks", None)
    stages = Stages(3 + 2 * bool(args.eval) + (prepared is not None) + bool(args.push_to_hub), quiet=args.quiet)
    show = not args.quiet
    with stages.stage(f"Loading {args.model}"):
        from ..pruner import AlphaPruner

        pruner = AlphaPruner.from_pretrained(args.model, show_progress=show, **load_kwargs(args))
    from ..checkpoint.writers import get_writer

    get_writer(args.format, **writer_options(args)).check_model(pruner.model, config)  # before pruning
    ppl: dict[str, Any] = {}
    dense = before = None
    if args.eval:
        from ..evaluate import evaluation_protocol

        ppl.update(evaluation_protocol(pruner.model, pruner.tokenizer, args.eval_dataset, args.eval_seqlen,
                                       args.max_windows))
        with stages.stage(f"Dense model: spectra and perplexity ({ppl['dataset']}, {ppl['windows']} windows)"):
            dense = _measure_dense(pruner, config, args, ppl)
            before = pruner.esd_report
        print(f"perplexity before pruning: {ppl['dense']:.3f}", flush=True)
    with stages.stage(f"Pruning to {run_label(config)}"):
        _, report = pruner.prune(config, show_progress=show)
    if args.eval:
        with stages.stage("Pruned model: perplexity, KL divergence to the dense model, spectra"):
            _measure_pruned(pruner, dense, args, ppl, before)
        del dense
        pruner.perplexity.update(ppl)
    if prepared is not None:
        with stages.stage(f"Zero-shot accuracy of the pruned model on {', '.join(prepared.labels)}"):
            from ..evaluate import zero_shot

            accuracy = zero_shot(pruner.model, pruner.tokenizer, prepared, limit=args.limit,
                                 batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                                 quiet=not getattr(args, "verbose", False))
        pruner.evaluation["zero_shot"] = accuracy.to_dict()
    with stages.stage(f"Saving to {output} ({args.format})"):
        pruner.save_pretrained(output, format=args.format, max_shard_size=args.max_shard_size,
                               overwrite=overwrite, **writer_options(args))
    print_summary(report, config, ppl, output, time.perf_counter() - start, peak_memory(), pruner.evaluation)
    if prepared is not None:
        print_zero_shot(accuracy)
    if args.push_to_hub:
        with stages.stage(f"Pushing to the Hub: {args.push_to_hub}"):
            url = push_or_explain(output, args.push_to_hub, args.private, args.push_timeout)
        print(f"pushed to: {url}")
    return 0
