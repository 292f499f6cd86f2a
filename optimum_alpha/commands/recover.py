"""``recover``: distil (or fine-tune) a saved pruned model back towards its dense teacher, zeros kept."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import format_memory, load_kwargs, peak_memory, positive_int

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
    parser.add_argument("--format", choices=("sparse", "dense"), default=None,
                        help="checkpoint format (default: FOLDER's own)")
    train = parser.add_argument_group("training")
    train.add_argument("--objective", choices=("kd", "lm", "mix"), default="kd",
                       help="kd: KL to the teacher's next-token distribution; lm: next-token loss; mix: both")
    train.add_argument("--method", choices=("full", "lora"), default="full",
                       help="full: every kept weight trains; lora: peft adapters, merged back")
    train.add_argument("--steps", type=positive_int, default=200, help="optimizer steps")
    train.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 5e-5 full, 5e-4 lora)")
    train.add_argument("--batch-size", type=positive_int, default=1, help="windows per micro-batch")
    train.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--seqlen", type=positive_int, default=512, help="tokens per training window")
    train.add_argument("--temperature", type=float, default=1.0, help="KD temperature")
    train.add_argument("--kd-weight", type=float, default=0.5, help="share of KD in --objective mix")
    train.add_argument("--hidden-mse", type=float, default=0.0, metavar="W",
                       help="weight of a per-block hidden-state MSE to the teacher (0: off)")
    train.add_argument("--lora-targets", default=None, metavar="NAMES",
                       help="comma-separated module names for adapters (default: every prunable Linear)")
    train.add_argument("--lora-rank", type=positive_int, default=16, help="LoRA rank r")
    train.add_argument("--lora-experts", action="store_true", help="adapters on fused MoE expert parameters too")
    train.add_argument("--train-routers", action="store_true", help="let MoE routers train (frozen by default)")
    train.add_argument("--dataset", default="c4", metavar="SRC",
                       help="'c4' (shipped sample, calibration documents left out), a .txt/.json/.jsonl/.parquet "
                       "file or a datasets Hub id")
    train.add_argument("--seed", type=int, default=0, help="data order seed")
    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                      help="Trainer checkpoints (default: OUTPUT.recovery, deleted once the run completes)")
    ckpt.add_argument("--save-steps", type=positive_int, default=50, help="a resumable checkpoint every N steps")
    ckpt.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--no-eval", action="store_true", help="skip the perplexity before/after")
    evaluation.add_argument("--eval-dataset", default="wikitext2", metavar="NAME", help="evaluation text")
    evaluation.add_argument("--eval-seqlen", type=positive_int, default=512, metavar="N",
                            help="tokens per evaluation window")
    evaluation.add_argument("--max-windows", type=positive_int, default=20, metavar="N",
                            help="evaluation windows (the demo's protocol: 20 x 512)")
    loading = parser.add_argument_group("loading")
    loading.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                         help="weights' dtype of student and teacher (default: as saved)")


def config_from_args(args: argparse.Namespace):
    from ..recovery import RecoveryConfig

    return RecoveryConfig(
        objective=args.objective, method=args.method, steps=args.steps, learning_rate=args.lr,
        batch_size=args.batch_size, gradient_accumulation=args.grad_accum, seqlen=args.seqlen,
        temperature=args.temperature, kd_weight=args.kd_weight, hidden_mse_weight=args.hidden_mse,
        lora_targets=args.lora_targets, lora_rank=args.lora_rank, lora_experts=args.lora_experts,
        train_routers=args.train_routers, dataset=args.dataset, seed=args.seed, output_dir=args.checkpoint_dir,
        save_steps=args.save_steps, resume=args.resume, evaluate=not args.no_eval, eval_dataset=args.eval_dataset,
        eval_seqlen=args.eval_seqlen, eval_windows=args.max_windows)


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
