"""Perplexity of pruned SmolLM2-135M on WikiText-2: pruners x allocations, metrics, and the ε / bound sweep.

Defaults follow the standard protocol (WikiText-2 test, all 148 windows of 2048 tokens; calibration 64 C4
windows x 512 tokens, seed 0). Every table comes from one command, e.g.::

    python benchmarks/quality.py --table 1      # magnitude/Wanda/SparseGPT x uniform/OWL/alpha
    python benchmarks/quality.py --table 2      # Wanda 70 %, allocation driven by each metric
    python benchmarks/quality.py --table solver # SparseGPT vs ALPS x uniform/alpha, with pruning times
    python benchmarks/quality.py --table eps --plot docs/img/eps_sweep.png
    python benchmarks/quality.py --table eps --max-sparsity none 0.95 1.0 --granularity block matrix \
        --seeds 0 1 2

Reduced settings for a slow machine: ``--nsamples 16 --seqlen 512 --max-windows 8 --eval-seqlen 512``.
``--max-sparsity none`` reproduces the reference code's unbounded mapping (η·ratio, a unit past 100 % is
emptied and the total falls short by the excess); a number is the library's bound with exact redistribution.
Each finished run is printed at once (``run: ...``) and appended to ``--log`` as JSON, so a long job that is
stopped still leaves its numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ModelFactory, Session, markdown_table, print_report  # noqa: E402
from optimum_alpha.esd import canonical_metric  # noqa: E402

SHAPE_METRICS = ("alpha_hill", "alpha_hat", "stable_rank", "entropy")
SCALE_METRICS = ("frobenius_norm_sq", "spectral_norm_sq")
ALL_METRICS = SHAPE_METRICS + SCALE_METRICS


def parse_bound(text: str) -> float | None:
    """``none`` -> None (the reference's unbounded mapping), else a float in (0, 1]."""
    return None if str(text).lower() == "none" else float(text)


def bound_label(bound: float | None) -> str:
    return "none" if bound is None else f"{bound:g}"


def unbounded_sparsities(scores: Sequence[float], counts: Sequence[int], sparsity: float,
                         epsilon: float) -> list[float]:
    """The reference mapping: η·ratio with η matching the budget and no bound (values may exceed 1)."""
    from optimum_alpha.allocation import alpha_ratios

    ratios = alpha_ratios(scores, epsilon)
    eta = sparsity * sum(counts) / sum(r * d for r, d in zip(ratios, counts))
    return [eta * r for r in ratios]


@contextlib.contextmanager
def reference_allocation() -> Iterator[None]:
    """Swap the pruner's bounded allocation for the unbounded one (a unit past 100 % is emptied)."""
    import optimum_alpha.allocations.alpha as alpha_module

    original = alpha_module.alpha_allocation

    def allocate(scores, counts, sparsity, epsilon=0.3, max_sparsity=1.0):
        return [min(s, 1.0) for s in unbounded_sparsities(scores, counts, sparsity, epsilon)]

    alpha_module.alpha_allocation = allocate
    try:
        yield
    finally:
        alpha_module.alpha_allocation = original


class Runner:
    """Runs (and caches) pruning configs on one session with fixed calibration/evaluation settings."""

    def __init__(self, session: Session, args: argparse.Namespace) -> None:
        self.session = session
        self.args = args
        self.cache: dict[tuple, dict[str, Any]] = {}
        self.log = Path(args.log) if args.log else None
        for path in args.resume or []:
            self._load(Path(path))

    def _load(self, path: Path) -> None:
        """Reuse the runs of an earlier log (same calibration/evaluation settings: the caller's promise)."""
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "dense":
                self.cache[("dense",)] = record
                continue
            if record["bound"] == "-" and record["allocation"] != "uniform":
                continue  # an OWL run logged without its bound
            bound = 0.99 if record["allocation"] == "uniform" else parse_bound(record["bound"])
            key = (record["method"], record["allocation"], round(record["sparsity"], 6), record["seed"],
                   record["metric"], record["epsilon"], bound, record["granularity"])
            self.cache[key] = record

    def dense(self) -> float:
        key = ("dense",)
        if key not in self.cache:
            self.session.restore()
            start = time.perf_counter()
            ppl = self.session.perplexity(self.args.eval_seqlen, self.args.max_windows,
                                          self.args.eval_dataset)
            self._record(key, {"kind": "dense", "perplexity": ppl, "eval_s": time.perf_counter() - start})
        return self.cache[key]["perplexity"]

    def run(self, method: str, allocation: str, sparsity: float, seed: int, metric: str = "alpha_hill",
            epsilon: float | None = None, bound: float | None = 0.99, granularity: str = "block") -> dict:
        """Perplexity of one pruned model; uniform/OWL ignore metric, ε and granularity."""
        from optimum_alpha import AlphaPruningConfig

        epsilon = self.args.epsilon if epsilon is None else epsilon
        if allocation != "alpha":
            metric, epsilon, granularity = "-", None, "block"
            bound = 0.99 if allocation == "uniform" or bound is None else bound
        key = (method, allocation, round(sparsity, 6), seed, metric, epsilon, bound, granularity)
        if key in self.cache:
            return self.cache[key]
        config = AlphaPruningConfig(
            sparsity=sparsity, method=method, allocation=allocation,
            metric=metric if allocation == "alpha" else "alpha_hill",
            epsilon=epsilon if epsilon is not None else 0.3, max_sparsity=1.0 if bound is None else bound,
            granularity=granularity, nsamples=self.args.nsamples, seqlen=self.args.seqlen, seed=seed,
        )
        use_reference = allocation == "alpha" and bound is None
        with reference_allocation() if use_reference else contextlib.nullcontext():
            if allocation == "alpha":  # cheap: two settings that allocate alike are run once
                targets, _ = self.session.pruner.allocate(config)
                same = (method, round(sparsity, 6), seed, tuple(round(t, 6) for t in targets.values()))
                if same in self.cache:
                    self.cache[key] = {**self.cache[same], "bound": bound_label(bound), "epsilon": epsilon,
                                       "metric": metric, "granularity": granularity}
                    return self.cache[key]
            result = self.session.run(config, self.args.eval_seqlen, self.args.max_windows,
                                      self.args.eval_dataset)
        record = {
            "kind": "pruned", "method": method, "allocation": allocation, "sparsity": sparsity, "seed": seed,
            "metric": metric, "epsilon": epsilon,
            "bound": "-" if allocation == "uniform" else bound_label(bound),
            "granularity": granularity, "perplexity": result.perplexity, "prune_s": result.prune_s,
            "eval_s": result.eval_s, "total_sparsity": result.total_sparsity,
            "max_block_target": max(result.block_targets), "min_block_target": min(result.block_targets),
        }
        if allocation == "alpha":
            scores, counts = self.session.pruner.esd_report.scores(metric, granularity)
            record["max_unbounded"] = max(unbounded_sparsities(scores, counts, sparsity, epsilon))
        self._record(key, record)
        if allocation == "alpha":
            self.cache[same] = record
        return record

    def _record(self, key: tuple, record: dict) -> None:
        self.cache[key] = record
        print("run: " + json.dumps(record), flush=True)
        if self.log is not None:
            with self.log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def mean(self, seeds: Sequence[int], **kwargs: Any) -> tuple[float, str]:
        """Mean perplexity over seeds, and a cell text with the spread when there are several seeds."""
        values = [self.run(seed=s, **kwargs)["perplexity"] for s in seeds]
        mean = statistics.fmean(values)
        if len(values) == 1:
            return mean, f"{mean:.2f}"
        return mean, f"{mean:.2f} ({min(values):.1f}-{max(values):.1f})"


# ----------------------------------------------------------------------------------------------- tables
def table_main(runner: Runner, args: argparse.Namespace) -> str:
    """Table 1: rows method x allocation, columns sparsities, plus the dense model and verdict lines."""
    bound = args.max_sparsity[0]
    headers = ["method", "allocation"] + [f"{s:.0%}" for s in args.sparsities]
    rows: list[list[Any]] = [["dense", "-"] + [f"{runner.dense():.2f}"] * len(args.sparsities)]
    means: dict[tuple, float] = {}
    for method in args.methods:
        for allocation in args.allocations:
            cells = []
            for sparsity in args.sparsities:
                mean, text = runner.mean(args.seeds, method=method, allocation=allocation, sparsity=sparsity,
                                         bound=bound, granularity=args.granularity[0])
                means[(method, allocation, sparsity)] = mean
                cells.append(text)
            rows.append([method, allocation] + cells)
    notes = []
    for method in args.methods:
        for sparsity in args.sparsities:
            alpha = means.get((method, "alpha", sparsity))
            for other in ("uniform", "owl"):
                value = means.get((method, other, sparsity))
                if alpha is not None and value is not None:
                    verdict = "beats" if alpha < value else "does NOT beat"
                    notes.append(f"- {method} {sparsity:.0%}: alpha ({alpha:.2f}) {verdict} {other} "
                                 f"({value:.2f})")
    return markdown_table(headers, rows) + ("\n\n" + "\n".join(notes) if notes else "")


def table_solver(runner: Runner, args: argparse.Namespace) -> str:
    """Layer solvers compared (default SparseGPT vs ALPS): perplexity and pruning time of each method x
    allocation x sparsity, then the second method's perplexity and time relative to the first's."""
    bound = args.max_sparsity[0]
    base, other = args.methods[0], args.methods[-1]
    sparsities = sorted(args.sparsities)
    headers = ["method", "allocation"] + [f"{s:.0%}" for s in sparsities]
    rows: list[list[Any]] = [["dense", "-"] + [f"{runner.dense():.2f}"] * len(sparsities)]
    runs: dict[tuple, dict] = {}
    # Runs go in the order the sparsities and allocations were given, every method of a cell before the
    # next cell, so that a stopped job still leaves comparable pairs in its log.
    for sparsity in args.sparsities:
        for allocation in args.allocations:
            for method in args.methods:
                runs[(method, allocation, sparsity)] = runner.run(method, allocation, sparsity, args.seeds[0],
                                                                  bound=bound)
    for method in args.methods:
        for allocation in args.allocations:
            cells = [runs[(method, allocation, s)] for s in sparsities]
            cells = [f"{r['perplexity']:.2f} ({r['prune_s']:.0f} s)" for r in cells]
            rows.append([method, allocation] + cells)
    ratio_rows = []
    for allocation in args.allocations:
        ppl, time_ = [], []
        for sparsity in sparsities:
            a, b = runs[(other, allocation, sparsity)], runs[(base, allocation, sparsity)]
            ppl.append(f"{a['perplexity'] / b['perplexity']:.2f}x")
            time_.append(f"{a['prune_s'] / b['prune_s']:.1f}x")
        ratio_rows += [[f"{other}/{base} perplexity", allocation] + ppl,
                       [f"{other}/{base} pruning time", allocation] + time_]
    title = f"cells: WikiText-2 perplexity (pruning time); seed {args.seeds[0]}, bound {bound_label(bound)}"
    return (title + "\n\n" + markdown_table(headers, rows) + "\n\n"
            + markdown_table(["ratio", "allocation"] + headers[2:], ratio_rows))


def table_metrics(runner: Runner, args: argparse.Namespace) -> str:
    """Table 2: one method at one sparsity, allocation driven by each metric, and uniform."""
    method, sparsity, bound = args.methods[0], args.sparsities[0], args.max_sparsity[0]
    uniform, uniform_text = runner.mean(args.seeds, method=method, allocation="uniform", sparsity=sparsity)
    rows: list[list[Any]] = [["uniform", "-", uniform_text, "-"]]
    for metric in args.metrics:
        mean, text = runner.mean(args.seeds, method=method, allocation="alpha", sparsity=sparsity,
                                 metric=metric,
                                 bound=bound, granularity=args.granularity[0])
        kind = "shape" if metric in SHAPE_METRICS else "scale"
        rows.append([metric, kind, text, "yes" if mean < uniform else "no"])
    title = f"{method}, {sparsity:.0%} sparsity, ε {args.epsilon:g}, bound {bound_label(bound)}"
    return title + "\n\n" + markdown_table(["metric", "kind", "perplexity", "beats uniform"], rows)


def table_epsilon(runner: Runner, args: argparse.Namespace) -> tuple[str, dict]:
    """ε x bound x granularity sweep, one column per seed plus the mean; returns the table and plot data."""
    method, sparsity = args.methods[0], args.sparsities[0]
    headers = ["granularity", "bound", "ε", "max unbounded"] + [f"seed {s}" for s in args.seeds] + ["mean"]
    uniform = [runner.run(method, "uniform", sparsity, s)["perplexity"] for s in args.seeds]
    rows: list[list[Any]] = [["uniform", "-", "-", "-"] + [f"{v:.2f}" for v in uniform]
                             + [f"{statistics.fmean(uniform):.2f}"]]
    curves: dict[str, list[tuple[float, list[float]]]] = {}
    for granularity in args.granularity:
        for bound in args.max_sparsity:
            for epsilon in args.epsilons:
                records = [runner.run(method, "alpha", sparsity, s, metric=args.metrics[0], epsilon=epsilon,
                                      bound=bound, granularity=granularity) for s in args.seeds]
                values = [r["perplexity"] for r in records]
                curves.setdefault(f"{granularity}, bound {bound_label(bound)}", []).append((epsilon, values))
                rows.append([granularity, bound_label(bound), f"{epsilon:g}",
                             f"{records[0]['max_unbounded']:.3f}"]
                            + [f"{v:.2f}" for v in values] + [f"{statistics.fmean(values):.2f}"])
    title = f"{method}, {sparsity:.0%} sparsity, metric {args.metrics[0]}"
    return title + "\n\n" + markdown_table(headers, rows), {"uniform": uniform, "curves": curves,
                                                              "title": title}


def table_allocation(runner: Runner, args: argparse.Namespace) -> str:
    """Per-block α and target sparsity of every (granularity, bound, ε) setting: no pruning, ESD only."""
    from optimum_alpha import AlphaPruningConfig

    pruner, sparsity, metric = runner.session.pruner, args.sparsities[0], args.metrics[0]
    blocks = pruner.block_weights()
    sizes = [sum(m.numel for m in block.matrices) for block in blocks]
    columns, headers = [], ["block", metric]
    for granularity in args.granularity:
        for bound in args.max_sparsity:
            for epsilon in args.epsilons:
                config = AlphaPruningConfig(sparsity=sparsity, metric=metric, epsilon=epsilon,
                                            granularity=granularity,
                                            max_sparsity=1.0 if bound is None else bound)
                with reference_allocation() if bound is None else contextlib.nullcontext():
                    targets, _ = pruner.allocate(config)
                per_block = [0.0] * len(pruner.blocks)
                for i, block in enumerate(blocks):
                    for matrix in block.matrices:
                        per_block[i] += targets[matrix.name] * matrix.numel / sizes[i]
                columns.append(per_block)
                headers.append(f"{granularity[0]} {bound_label(bound)} ε{epsilon:g}")
    scores = [b.metrics[metric] for b in pruner.esd_report.blocks]
    rows = [[i, f"{scores[i]:.3f}"] + [f"{c[i]:.3f}" for c in columns] for i in range(len(scores))]
    total = sum(sizes)
    rows.append(["total", "-"] + [f"{sum(c[i] * sizes[i] for i in range(len(sizes))) / total:.4f}"
                                  for c in columns])
    title = (f"target sparsity per block at {sparsity:.0%} (b = block, m = matrix granularity, shown as the "
             "block's parameter-weighted mean; bound none = reference mapping, where 1.000 means emptied and "
             "the total falls short)")
    return title + "\n\n" + markdown_table(headers, rows)


def plot_epsilon(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in data["curves"].items():
        eps = [e for e, _ in points]
        means = [statistics.fmean(v) for _, v in points]
        low = [m - min(v) for m, (_, v) in zip(means, points)]
        high = [max(v) - m for m, (_, v) in zip(means, points)]
        ax.errorbar(eps, means, yerr=[low, high], marker="o", capsize=3, label=label)
    ax.axhline(statistics.fmean(data["uniform"]), color="grey", linestyle="--", label="uniform")
    ax.set_xlabel("ε (non-uniformity of the allocation)")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_yscale("log")
    ax.set_title(data["title"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--table", choices=["1", "2", "eps", "alloc", "solver"], default="1",
                   help="alloc: per-block allocations only (ESD, no pruning); solver: layer solvers compared "
                        "(perplexity, pruning time and their ratios; default sparsegpt vs alps)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: magnitude wanda sparsegpt (table 1), sparsegpt alps (solver), wanda "
                        "(tables 2 and eps)")
    p.add_argument("--allocations", nargs="+", default=None,
                   help="default: uniform owl alpha (uniform alpha for the solver table)")
    p.add_argument("--sparsities", type=float, nargs="+", default=None,
                   help="default: 0.5 0.6 0.7 0.8 (table 1), 0.6 0.7 0.8 0.9 (solver), 0.7 (tables 2 "
                        "and eps)")
    p.add_argument("--metrics", nargs="+", default=None,
                   help="default: all six (table 2), alpha_hill (other tables)")
    p.add_argument("--epsilon", type=float, default=0.3, help="ε of tables 1 and 2")
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5], help="ε sweep")
    p.add_argument("--max-sparsity", type=parse_bound, nargs="+", default=[0.99],
                   help="bound(s); 'none' = reference unbounded mapping; tables 1 and 2 use the first")
    p.add_argument("--granularity", nargs="+", default=["block"], choices=["block", "matrix"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="calibration sampling seeds")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    p.add_argument("--max-windows", type=int, default=None, help="evaluation windows (default: all)")
    p.add_argument("--eval-seqlen", type=int, default=None, help="evaluation window (default 2048)")
    p.add_argument("--eval-dataset", default="wikitext2", help="wikitext2 (test split) or a local text file")
    p.add_argument("--plot", default=None, help="PNG path for the ε sweep")
    p.add_argument("--log", default=None, help="append every run as a JSON line to this file")
    p.add_argument("--resume", nargs="+", default=None,
                   help="reuse the runs of earlier --log files made with the same settings (not re-checked)")
    p.add_argument("--progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, model_factory: ModelFactory | None = None) -> str:
    args = build_parser().parse_args(argv)
    table_one, solver = args.table == "1", args.table == "solver"
    args.methods = args.methods or (["magnitude", "wanda", "sparsegpt"] if table_one
                                    else ["sparsegpt", "alps"] if solver else ["wanda"])
    args.sparsities = args.sparsities or ([0.5, 0.6, 0.7, 0.8] if table_one
                                          else [0.6, 0.7, 0.8, 0.9] if solver else [0.7])
    args.allocations = args.allocations or (["uniform", "alpha"] if solver else ["uniform", "owl", "alpha"])
    args.metrics = [canonical_metric(m) for m in args.metrics] if args.metrics else (
        list(ALL_METRICS) if args.table == "2" else ["alpha_hill"])
    session = Session(args.model, factory=model_factory, show_progress=args.progress)
    runner = Runner(session, args)
    start = time.perf_counter()
    if args.table == "1":
        body = table_main(runner, args)
    elif args.table == "2":
        body = table_metrics(runner, args)
    elif solver:
        body = table_solver(runner, args)
    elif args.table == "alloc":
        body = table_allocation(runner, args)
    else:
        body, data = table_epsilon(runner, args)
        if args.plot:
            plot_epsilon(data, args.plot)
    settings = (f"calibration C4 {args.nsamples} x {args.seqlen} tokens, seeds {args.seeds}; WikiText-2 "
                f"{args.max_windows or 'all'} windows of "
                f"{args.eval_seqlen or 'min(2048, max positions)'} tokens")
    return print_report(f"quality --table {args.table}", settings,
                        f"load + ESD {session.setup_s:.0f} s, runs {time.perf_counter() - start:.0f} s", body)


if __name__ == "__main__":
    main()
