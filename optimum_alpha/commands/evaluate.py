"""``eval``: perplexity of a dense or pruned model by the standard sliding-window protocol."""

from __future__ import annotations

import argparse
import time

from .common import (
    Stages,
    add_eval_arguments,
    add_model_arguments,
    format_memory,
    load_kwargs,
    peak_memory,
    positive_int,
)

NAME = "eval"
HELP = "measure perplexity (WikiText-2 by default) of a dense or pruned model"
DESCRIPTION = (
    "Perplexity by the standard protocol: the split is joined with blank lines, tokenized once and cut\n"
    "into non-overlapping windows of --seqlen tokens; the result is exp(mean token loss over the windows).\n"
    "Works on Hub ids, dense folders, pruned folders (sparse or dense format) and GGUF files.\n\n"
    "example:\n"
    "  optimum-cli alpha-prune eval outputs/smollm2-135m-alpha-wanda-50 --seqlen 512 --max-windows 20"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_eval_arguments(parser)
    parser.add_argument(
        "--seqlen",
        type=positive_int,
        default=None,
        metavar="N",
        help="tokens per window (default: None, min(2048, the model's max positions))",
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    stages = Stages(2)
    with stages.stage(f"Loading {args.model}"):
        from ..models import load_model

        model, tokenizer = load_model(args.model, **load_kwargs(args))
    with stages.stage(f"Perplexity on {args.eval_dataset}"):
        from ..evaluate import perplexity

        value = perplexity(
            model, tokenizer, dataset=args.eval_dataset, seqlen=args.seqlen, max_windows=args.max_windows
        )
    print(f"perplexity ({args.eval_dataset}) of {args.model}: {value:.3f}")
    print(f"time: {time.perf_counter() - start:.1f} s, peak memory: {format_memory(peak_memory())}")
    return 0
