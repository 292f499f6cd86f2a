"""``recover``: distil (or fine-tune) a saved pruned model back towards its dense teacher, zeros kept."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..options import RECOVERY_OPTIONS, format_names
from .common import format_memory, load_kwargs, peak_memory
from .config_flags import RECOVERY_GROUP_TITLES, add_config_flags, given_values

NAME = "recover"
HELP = "recover a pruned model's quality by distillation or fine-tuning that keeps every pruned zero"
DESCRIPTION = (
    "Train the kept weights of a pruned FOLDER (written by 'prune') with transformers' Trainer: knowledge\n"
    "distillation from the dense --teacher (default), next-token loss, or both; full fine-tuning or LoRA (peft,\n"
    "merged back). Every pruned weight is exactly 0 after every step, N:M patterns and width-pruned shapes are\n"
    "kept. Data: the shipped C4 sample minus the documents the pruning calibrated on. Ctrl-C stops after the\n"
    "current step with a checkpoint that --resume continues. The output has the folder's format.\n\n"
    "example (about 30 min on an idle 2-core CPU; docs/recovery.md):\n"
    "  optimum-cli alpha-prune recover outputs/smollm2-135m-alpha-wanda-50 --teacher smollm2-135m --steps 200 \\\n"
    "      --output outputs/smollm2-50-recovered"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="a pruned folder written by 'prune'")
    parser.add_argument("--teacher", default=None, metavar="BASE",
                        help="the dense model FOLDER was pruned from (Hub id, folder, .gguf or 'smollm2-135m'); "
                        "needed unless --objective lm")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder for the recovered model")
    parser.add_argument("--overwrite", action="store_true", help="allow replacing an existing --output")
    parser.add_argument("--format", choices=format_names(), default=None,
                        help="checkpoint format (default: FOLDER's own)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="weights' dtype of student and teacher (default: as saved)")
    # one flag per RecoveryConfig field, generated from optimum_alpha.options.RECOVERY_OPTIONS
    add_config_flags(parser, options=RECOVERY_OPTIONS, titles=RECOVERY_GROUP_TITLES)


def config_from_args(args: argparse.Namespace):
    """RecoveryConfig from the flags given (the others keep the options' defaults)."""
    from ..recovery import RecoveryConfig

    return RecoveryConfig(**given_values(args, RECOVERY_OPTIONS))


def run(args: argparse.Namespace) -> int:
    from ..recovery import RecoveryInterrupted, recover
    from ..interrupts import INTERRUPTED_EXIT_CODE as INTERRUPTED
    from .common import fail

    config = config_from_args(args)  # every flag value checked before anything loads
    start = time.perf_counter()
    try:
        _, report = recover(args.folder, teacher=args.teacher, config=config, output=args.output,
                            format=args.format, overwrite=args.overwrite, show_progress=not args.quiet,
                            **load_kwargs(args))
    except RecoveryInterrupted as stop:
        fail(str(stop), code=INTERRUPTED)
    print(report.summary())
    print(f"saved to {args.output}")
    print(f"time: {time.perf_counter() - start:.1f} s, peak memory: {format_memory(peak_memory())}")
    return 0
