"""Beyond perplexity: KL divergence to the dense model, top-1 agreement, block alphas after pruning and
zero-shot accuracy of pruned SmolLM2-135M, one row per model, on the same evaluation windows.

Defaults are the ``make demo`` protocol (Wanda 50 %, calibration 32 C4 document windows x 512 tokens, seed 0;
evaluation: the first 20 WikiText-2 test windows of 512 tokens) with AlphaPruning and uniform allocation::

    python benchmarks/evaluation.py                                   # dense, alpha and uniform at 50 %
    python benchmarks/evaluation.py --tasks wikitext2_continuation    # + zero-shot on the shipped task
    python benchmarks/evaluation.py --tasks paper --limit 100         # the paper's seven (needs the Hub)

The dense model's side of the KL divergence is captured once before any pruning (the output head's inputs,
:class:`optimum_alpha.evaluation.kl.DenseReference`), so every row compares with the same dense logits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ModelFactory, Session, markdown_table, print_report  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--allocations", nargs="+", default=["alpha", "uniform"])
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=20)
    parser.add_argument("--eval-dataset", default="wikitext2")
    parser.add_argument("--tasks", default=None, help="lm-eval tasks for a zero-shot column (default: none)")
    parser.add_argument("--limit", type=float, default=None, help="documents per task")
    return parser.parse_args(argv)


def _zero_shot(session: Session, args: argparse.Namespace, prepared: Any) -> dict[str, Any] | None:
    if prepared is None:
        return None
    from optimum_alpha.evaluate import zero_shot

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    return zero_shot(session.model, session.tokenizer, prepared, limit=limit).to_dict()


def _accuracy_cells(result: dict[str, Any] | None, labels: list[str]) -> list[Any]:
    if result is None:
        return []
    return [f"{result['tasks'][name]['acc']:.4f}" for name in labels] + (
        [f"{result['mean_accuracy']:.4f}"] if len(labels) > 1 else [])


def main(argv: Sequence[str] | None = None, model_factory: ModelFactory | None = None) -> str:
    from optimum_alpha import AlphaPruningConfig
    from optimum_alpha.evaluation.kl import DenseReference
    from optimum_alpha.evaluation.spectra import spectra_after_pruning

    args = parse_args(argv)
    prepared = None
    if args.tasks:
        from optimum_alpha.evaluation.zero_shot import prepare_tasks

        prepared = prepare_tasks(args.tasks)
    start = time.perf_counter()
    session = Session(args.model, factory=model_factory)
    before = session.pruner.esd_report
    dense = DenseReference.capture(session.model, session.tokenizer, args.eval_dataset, args.eval_seqlen,
                                   args.max_windows)
    mean_before = sum(b.metrics["alpha_hill"] for b in before.blocks) / len(before.blocks)
    labels = prepared.labels if prepared else []
    rows = [["dense", "-", f"{dense.perplexity:.3f}", "0", "0", "0", "1", f"{mean_before:.4f}", "-",
             *_accuracy_cells(_zero_shot(session, args, prepared), labels)]]
    for allocation in args.allocations:
        config = AlphaPruningConfig(sparsity=args.sparsity, method=args.method, allocation=allocation,
                                    nsamples=args.nsamples, seqlen=args.seqlen)
        session.restore()
        run_start = time.perf_counter()
        _, report = session.pruner.prune(config, show_progress=False)
        prune_s = time.perf_counter() - run_start
        kl = dense.compare(session.model)
        _, spectra = spectra_after_pruning(session.model, before)
        rows.append([f"{args.method} {report.total_sparsity:.0%}", allocation, f"{kl.perplexity:.3f}",
                     f"{kl.kl_mean:.4f}", f"{kl.kl_median:.4f}", f"{kl.kl_p99:.4f}", f"{kl.top1_agreement:.4f}",
                     f"{spectra.mean_after:.4f}", f"{prune_s:.0f}",
                     *_accuracy_cells(_zero_shot(session, args, prepared), labels)])
        print(f"run: {rows[-1]}", flush=True)
    headers = ["model", "allocation", "perplexity", "KL mean", "KL median", "KL p99", "top-1 agreement",
               "mean alpha_hill", "pruning s"] + [f"acc {name}" for name in labels] + (
        ["mean acc"] if len(labels) > 1 else [])
    settings = (f"protocol: {args.eval_dataset}, first {args.max_windows} windows x {args.eval_seqlen} tokens; "
                f"calibration {args.nsamples} x {args.seqlen} C4 document windows, seed 0; KL(dense || pruned) in "
                "nats/token; mean alpha_hill over blocks after pruning (dense row: before)"
                + (f"; zero-shot: {', '.join(labels)}, limit {args.limit}" if labels else ""))
    timing = f"total time: {time.perf_counter() - start:.0f} s"
    return print_report("KL divergence, alphas after pruning and zero-shot accuracy", settings, timing,
                        markdown_table(headers, rows))


if __name__ == "__main__":
    main()
