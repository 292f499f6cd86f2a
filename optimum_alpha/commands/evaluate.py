"""``eval``: perplexity, KL divergence to a reference model and lm-eval zero-shot accuracy of a dense or
pruned model, with its speed and memory on this machine."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .common import (
    Stages,
    add_eval_arguments,
    add_model_arguments,
    check_device_map,
    check_model_limits,
    format_memory,
    format_table,
    load_kwargs,
    peak_memory,
    positive_int,
)

NAME = "eval"
HELP = "measure perplexity, KL divergence to a reference and zero-shot accuracy of a dense or pruned model"
DESCRIPTION = (
    "Perplexity by the standard protocol: the split is joined with blank lines, tokenized once and cut\n"
    "into non-overlapping windows of --eval-seqlen tokens; the result is exp(mean token loss over the windows).\n"
    "--reference BASE also runs BASE on the same windows: per-token KL(BASE || MODEL) of the next-token\n"
    "distributions (mean, median, 99th percentile), top-1 agreement and both perplexities, in one pass.\n"
    "--tasks runs lm-evaluation-harness in-process (pip install 'optimum-alpha[eval]'): registry names,\n"
    "'paper' (or --tasks alone) for AlphaPruning's seven, or YAML/JSON task files with local data.\n"
    "Works on Hub ids, dense folders, pruned folders (sparse or dense format) and GGUF files.\n\n"
    "examples:\n"
    "  optimum-cli alpha-prune eval outputs/smollm2-135m-alpha-wanda-50 --eval-seqlen 512 --max-windows 20\n"
    "  optimum-cli alpha-prune eval outputs/smollm2-135m-alpha-wanda-50 --reference smollm2-135m \\\n"
    "      --tasks docs/examples/wikitext2_continuation.yaml --eval-seqlen 512 --max-windows 20"
)
PAPER_TASKS = "arc_easy,arc_challenge,boolq,hellaswag,piqa,winogrande,rte"  # = evaluation.zero_shot.PAPER_TASKS


def limit_value(text: str) -> int | float:
    """--limit: a whole number of documents, or a fraction of each task in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of documents or a fraction, got {text!r}") from None
    if value <= 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or a fraction in (0, 1), got {text!r}")
    return int(value) if value >= 1 else value


def add_zero_shot_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tasks`` and the lm-eval options, shared by ``eval`` and ``prune --eval``."""
    group = parser.add_argument_group("zero-shot accuracy (lm-evaluation-harness, the 'eval' extra)")
    group.add_argument("--tasks", nargs="?", const="paper", default=None, metavar="TASK[,TASK...]",
                       help=f"lm-eval task names, 'paper' for AlphaPruning's seven ({PAPER_TASKS}; also --tasks "
                       "alone), wikitext2_continuation (shipped, offline), or .yaml/.json task files whose "
                       "data_files may be relative to the file "
                       "(default: None, no zero-shot run)")
    group.add_argument("--limit", type=limit_value, default=None, metavar="N",
                       help="only the first N documents of each task (or a fraction < 1); printed with the "
                       "result (default: None, every document)")
    group.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                       help="lm-eval requests per forward pass (default: 1)")
    group.add_argument("--num-fewshot", type=int, default=None, metavar="N",
                       help="in-context examples per document (default: None, each task's own, 0 for the paper's)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_eval_arguments(parser, alias_flags=True)
    parser.add_argument("--reference", default=None, metavar="BASE",
                        help="also measure KL divergence and top-1 agreement to BASE (the dense model MODEL was "
                        "pruned from; same vocabulary) on the perplexity windows; loads both models "
                        "(default: None)")
    add_zero_shot_arguments(parser)
    parser.add_argument("--results", type=Path, default=None, metavar="FILE.json",
                        help="also write every number, the protocol and the lm-eval and task versions to this "
                        "JSON file (default: None)")


def check_reference(model: str, reference: str, kwargs: dict[str, Any]) -> None:
    """Before loading either model: the reference predicts the same tokens (configs, then tokenizers)."""
    from ..errors import ConfigError
    from ..models import SOURCE_OPTIONS, load_config, load_tokenizer, resolve_model_source

    configs = [load_config(source, **kwargs) for source in (model, reference)]
    sizes = [getattr(config, "vocab_size", None) for config in configs]
    if None not in sizes and sizes[0] != sizes[1]:
        raise ConfigError(f"--reference {reference} has a vocabulary of {sizes[1]} tokens and {model} {sizes[0]}: "
                          "KL divergence needs the same vocabulary; pass the model it was pruned from")
    vocabularies = []
    for source in (model, reference):
        name, extra = resolve_model_source(source)
        options = {k: v for k, v in {**extra, **kwargs}.items() if k in SOURCE_OPTIONS}
        tokenizer = load_tokenizer(name, **options)
        vocabularies.append(None if tokenizer is None else tokenizer.get_vocab())
    if None not in vocabularies and vocabularies[0] != vocabularies[1]:
        raise ConfigError(f"--reference {reference} has another tokenizer vocabulary than {model} "
                          f"({len(vocabularies[1])} vs {len(vocabularies[0])} tokens): KL divergence compares "
                          "distributions over the same tokens; pass the model it was pruned from")


def model_bytes(model: Any) -> int:
    """Memory of the model's parameters and buffers (each tied tensor once)."""
    seen: set[int] = set()
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.device.type != "meta" and id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def print_zero_shot(result) -> None:
    limit = f", first {result.limit} documents per task" if result.limit is not None else ""
    print(f"zero-shot accuracy (lm-eval {result.lm_eval_version}{limit}):")
    print(format_table(["task", "acc", "acc_norm", "documents", "version"], result.rows()))
    if len(result.tasks) > 1:
        print(f"mean acc over {len(result.tasks)} tasks: {result.mean_accuracy:.4f}")


def run(args: argparse.Namespace) -> int:
    from ..data import load_texts

    load_texts(args.eval_dataset)  # a wrong name or path fails before the model is loaded
    check_device_map(args.device_map)
    check_model_limits(args.model, load_kwargs(args), {"--eval-seqlen": args.eval_seqlen})
    prepared = None
    if args.tasks is not None:
        from ..evaluation.zero_shot import prepare_tasks

        prepared = prepare_tasks(args.tasks)  # extra installed, files readable, names registered
    if args.reference is not None:
        check_model_limits(args.reference, load_kwargs(args), {"--eval-seqlen": args.eval_seqlen})
        check_reference(args.model, args.reference, load_kwargs(args))
    start = time.perf_counter()
    stages = Stages(2 + (args.reference is not None) + (prepared is not None), quiet=args.quiet)
    from ..models import load_model

    with stages.stage(f"Loading {args.model}"):
        model, tokenizer = load_model(args.model, **load_kwargs(args))
    weights = model_bytes(model)
    reference = None
    if args.reference is not None:
        with stages.stage(f"Loading the reference {args.reference}"):
            reference, _ = load_model(args.reference, **load_kwargs(args))
    from ..evaluate import evaluation_protocol, kl_divergence, perplexity

    protocol = evaluation_protocol(model, tokenizer, args.eval_dataset, args.eval_seqlen, args.max_windows)
    described = f"{protocol['dataset']}, {protocol['windows']} windows x {protocol['seqlen']} tokens"
    results: dict[str, Any] = {"model": args.model, "protocol": protocol}
    with stages.stage(("KL divergence and perplexity" if reference is not None else "Perplexity") + f" on {described}"):
        pass_start = time.perf_counter()
        if reference is not None:
            kl = kl_divergence(model, reference, tokenizer, args.eval_dataset, args.eval_seqlen, args.max_windows,
                               show_progress=not args.quiet)
            value, speed = kl.perplexity, kl.tokens_per_second
            results["kl"] = {"reference": args.reference, **kl.to_dict()}
        else:
            value = perplexity(model, tokenizer, dataset=args.eval_dataset, seqlen=args.eval_seqlen,
                               max_windows=args.max_windows, show_progress=not args.quiet)
            speed = protocol["windows"] * protocol["seqlen"] / (time.perf_counter() - pass_start)
    results["perplexity"] = value
    print(f"perplexity ({described}) of {args.model}: {value:.3f}")
    if reference is not None:
        print(f"perplexity of the reference {args.reference}: {kl.reference_perplexity:.3f}")
        print(f"KL divergence to the reference: mean {kl.kl_mean:.6f}, median {kl.kl_median:.6f}, "
              f"p99 {kl.kl_p99:.6f} nats/token; top-1 agreement {kl.top1_agreement:.4f}")
    if prepared is not None:
        with stages.stage(f"Zero-shot accuracy on {', '.join(prepared.labels)}"):
            from ..evaluate import zero_shot

            accuracy = zero_shot(model, tokenizer, prepared, limit=args.limit, batch_size=args.batch_size,
                                 num_fewshot=args.num_fewshot, quiet=not getattr(args, "verbose", False))
        print_zero_shot(accuracy)
        results["zero_shot"] = accuracy.to_dict()
    memory = peak_memory()
    results["speed"] = {"tokens_per_second": speed, "model_mib": weights / 2**20, **memory}
    both = " (both models)" if reference is not None else ""
    print(f"speed: {speed:.0f} tokens/s (perplexity windows), model weights {weights / 2**20:.0f} MiB, "
          f"peak memory{both}: {format_memory(memory)}")
    print(f"time: {time.perf_counter() - start:.1f} s")
    if args.results is not None:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.results}")
    return 0
