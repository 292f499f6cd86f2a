"""``eval``: perplexity of a dense or pruned model by the standard sliding-window protocol."""

from __future__ import annotations

import argparse
import time

from .common import (
    Stages,
    add_eval_arguments,
    add_model_arguments,
    check_device_map,
    check_model_limits,
    format_memory,
    load_kwargs,
    peak_memory,
)

NAME = "eval"
HELP = "measure perplexity (WikiText-2 by default) of a dense or pruned model"
DESCRIPTION = (
    "Perplexity by the standard protocol: the split is joined with blank lines, tokenized once and cut\n"
    "into non-overlapping windows of --eval-seqlen tokens; the result is exp(mean token loss over the windows).\n"
    "Works on Hub ids, dense folders, pruned folders (sparse or dense format) and GGUF files.\n\n"
    "example:\n"
    "  optimum-cli alpha-prune eval outputs/smollm2-135m-alpha-wanda-50 --eval-seqlen 512 --max-windows 20"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_eval_arguments(parser, alias_flags=True)


def run(args: argparse.Namespace) -> int:
    from ..data import load_texts

    load_texts(args.eval_dataset)  # a wrong name or path fails before the model is loaded
    check_device_map(args.device_map)
    check_model_limits(args.model, load_kwargs(args), {"--eval-seqlen": args.eval_seqlen})
    start = time.perf_counter()
    stages = Stages(2, quiet=args.quiet)
    with stages.stage(f"Loading {args.model}"):
        from ..models import load_model

        model, tokenizer = load_model(args.model, **load_kwargs(args))
    from ..evaluate import evaluation_protocol, perplexity

    protocol = evaluation_protocol(model, tokenizer, args.eval_dataset, args.eval_seqlen, args.max_windows)
    described = f"{protocol['dataset']}, {protocol['windows']} windows x {protocol['seqlen']} tokens"
    with stages.stage(f"Perplexity on {described}"):
        value = perplexity(model, tokenizer, dataset=args.eval_dataset, seqlen=args.eval_seqlen,
                           max_windows=args.max_windows, show_progress=not args.quiet)
    print(f"perplexity ({described}) of {args.model}: {value:.3f}")
    print(f"time: {time.perf_counter() - start:.1f} s, peak memory: {format_memory(peak_memory())}")
    return 0
