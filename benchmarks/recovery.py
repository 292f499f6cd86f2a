"""Recovery benchmark: perplexity of pruned SmolLM2-135M folders before and after KD / LM / LoRA recovery.

For every pruned folder and every variant, one recovery run at a fixed token budget from the folder as saved
(the same ``optimum_alpha.recover`` the CLI calls), then perplexity by the demo's protocol. Dense and
before-recovery perplexities are measured once per folder. Rows are appended to ``--jsonl`` as they finish,
so a run stopped half-way keeps its rows; ``--table-only`` prints the table of a finished file.

    nice python benchmarks/recovery.py --pruned wanda50=outputs/smollm2-135m-alpha-wanda-50 \\
        --variants kd-full lm-full kd-lora --steps 32 --curve-every 8 --jsonl outputs/recovery.jsonl
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = {  # name -> RecoveryConfig overrides
    "kd-full": dict(objective="kd", method="full"),
    "lm-full": dict(objective="lm", method="full"),
    "kd-lora": dict(objective="kd", method="lora"),
    "lm-lora": dict(objective="lm", method="lora"),
}


def gap_closed(dense: float, before: float, after: float) -> float | None:
    """Share of the log-perplexity gap to dense closed by the recovery."""
    if before <= dense:
        return None
    return (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense))


def curve_callback(tokenizer, every: int, seqlen: int, windows: int, points: list):
    """A TrainerCallback that measures perplexity every ``every`` steps (the student being trained)."""
    from transformers import TrainerCallback

    from optimum_alpha.evaluate import perplexity

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.model = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.model = model

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if every and state.global_step % every == 0 and state.global_step < state.max_steps:
                value = perplexity(model or self.model, tokenizer, seqlen=seqlen, max_windows=windows,
                                   show_progress=False)
                points.append((int(state.global_step), value))
                model.train()

    return Curve()


def run(args: argparse.Namespace) -> None:
    import torch

    from optimum_alpha.evaluate import perplexity
    from optimum_alpha.models import load_model
    from optimum_alpha.recovery import RecoveryConfig, recover
    from optimum_alpha.recovery.entry import read_record

    torch.manual_seed(0)
    needs_teacher = any(VARIANTS[v]["objective"] != "lm" for v in args.variants)
    teacher, tokenizer = load_model(args.teacher) if needs_teacher else (None, None)
    dense = None
    out = Path(args.jsonl)
    out.parent.mkdir(parents=True, exist_ok=True)
    for item in args.pruned:
        label, folder = item.split("=", 1)
        if tokenizer is None:
            from optimum_alpha.models import load_tokenizer

            tokenizer = load_tokenizer(folder, required=True)
        measured = read_record(Path(folder)).get("perplexity") or {}
        same_protocol = (measured.get("windows"), measured.get("seqlen")) == (args.eval_windows, args.eval_seqlen)
        before = measured.get("pruned") if same_protocol else None  # the pruning run measured it: not again
        if before is None:
            from optimum_alpha.checkpoint import load_pruned

            before = perplexity(load_pruned(folder), tokenizer, seqlen=args.eval_seqlen,
                                max_windows=args.eval_windows, show_progress=False)
        if dense is None:
            dense = measured.get("dense") if same_protocol else None
            dense = dense or perplexity(teacher or load_model(args.teacher)[0], tokenizer, seqlen=args.eval_seqlen, max_windows=args.eval_windows,
                                        show_progress=False)
            print(f"dense perplexity: {dense:.3f}", flush=True)
        for variant in args.variants:
            points: list = []
            config = RecoveryConfig(steps=args.steps, seqlen=args.seqlen, evaluate=False, save_steps=10**6,
                                    learning_rate=args.lr, **VARIANTS[variant])
            start, cpu = time.perf_counter(), time.process_time()
            model, report = recover(folder, teacher=teacher if config.needs_teacher else None, config=config,
                                    show_progress=not args.quiet,
                                    callbacks=[curve_callback(tokenizer, args.curve_every, args.eval_seqlen,
                                                              args.eval_windows, points)]
                                    if args.curve_every and variant in args.curve_variants else None)
            wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
            after = perplexity(model, tokenizer, seqlen=args.eval_seqlen, max_windows=args.eval_windows,
                               show_progress=False)
            row = {"pruned": label, "variant": variant, "steps": report.steps, "tokens": report.tokens,
                   "dense": dense, "before": before, "after": after, "gap_closed": gap_closed(dense, before, after),
                   "curve": [[0, before]] + [[s, p] for s, p in points] + [[report.steps, after]],
                   "tokens_per_step": config.tokens_per_step, "lr": config.lr, "wall_s": wall, "cpu_s": cpu_s,
                   "sparsity_before": report.sparsity_before, "sparsity_after": report.sparsity_after,
                   "loss_first": report.loss_curve[0][1] if report.loss_curve else None,
                   "loss_last": report.loss_curve[-1][1] if report.loss_curve else None,
                   "load": os.getloadavg()[0], "data": report.data["source"]}
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
            del model, report
            gc.collect()  # the finished run's optimizer state goes before the next run allocates its own


def table(path: str) -> str:
    from benchmarks.common import markdown_table

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    body = markdown_table(
        ["pruned", "variant", "lr", "tokens", "dense", "before", "after", "gap closed", "sparsity before/after",
         "CPU s", "wall s"],
        [[r["pruned"], r["variant"], f"{r['lr']:g}", r["tokens"], r["dense"], r["before"], r["after"],
          f"{r['gap_closed']:.0%}" if r["gap_closed"] is not None else "-",
          f"{r['sparsity_before']:.4f} / {r['sparsity_after']:.4f}", round(r["cpu_s"]), round(r["wall_s"])]
         for r in rows])
    curves = [f"- {r['pruned']} {r['variant']}: " + ", ".join(f"{s * r['tokens_per_step']}: {p:.2f}" for s, p in r["curve"])
              for r in rows if len(r["curve"]) > 2]
    return body + ("\n\nperplexity against training tokens:\n" + "\n".join(curves) if curves else "")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pruned", nargs="+", default=["wanda50=outputs/smollm2-135m-alpha-wanda-50"],
                        help="LABEL=FOLDER of pruned checkpoints")
    parser.add_argument("--teacher", default="smollm2-135m")
    parser.add_argument("--variants", nargs="+", default=["kd-full", "lm-full", "kd-lora"], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: the library's, per method)")
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--curve-every", type=int, default=0, help="perplexity every N steps (0: off)")
    parser.add_argument("--curve-variants", nargs="+", default=["kd-full"], help="variants that get the curve")
    parser.add_argument("--jsonl", default="outputs/recovery.jsonl")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.table_only:
        run(args)
    text = table(args.jsonl)
    print(text)
    return text


if __name__ == "__main__":
    main()
