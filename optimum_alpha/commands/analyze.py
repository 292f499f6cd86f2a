"""``analyze``: the ESD analysis of a model, as a table, ``esd.json`` and plots, before any pruning."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..options import METRIC_ALIASES, METRICS, default
from .common import (
    Stages,
    add_model_arguments,
    add_output_arguments,
    check_device_map,
    check_output_dir,
    format_table,
    load_kwargs,
)

NAME = "analyze"
HELP = "measure each block's weight-spectrum metrics (alpha) and preview the sparsity allocation"
DESCRIPTION = (
    "Compute the empirical spectral density (ESD) of every prunable matrix inside the transformer blocks,\n"
    "fit a power law to its tail (alpha_hill and other metrics), and print the per-block means.\n"
    "With --output, also write esd.json, the block profile plot and ESD fit plots of selected matrices.\n"
    "With --sparsity, also print the AlphaPruning allocation that 'prune --allocation alpha' would make.\n"
    "On a folder pruned by optimum-alpha, also shows the metrics it recorded before pruning beside today's.\n\n"
    "example:\n  optimum-cli alpha-prune analyze smollm2-135m --sparsity 0.7 --output outputs/smollm2-esd"
)
DEFAULT_EPSILON = default("epsilon")


def metric_list(text: str) -> list[str]:
    """argparse type of ``--metric``: one name or a comma-separated list, each checked now."""
    names = [METRIC_ALIASES.get(part.strip(), part.strip()) for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric {', '.join(unknown) or text!r}; choose from {', '.join(METRICS)}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--metric",
        action="append",
        type=metric_list,
        default=None,
        metavar="METRIC[,METRIC...]",
        help=f"metric to compute, any of {', '.join(METRICS)}; repeat the flag or separate names with commas; "
        "the first one drives the plots and the allocation (default: all, alpha_hill first)",
    )
    add_output_arguments(parser, "esd.json, allocation.json and the PNG plots", "None, print only")
    parser.add_argument(
        "--sparsity",
        type=float,
        default=None,
        metavar="S",
        help="also print the per-block sparsities that AlphaPruning would allocate for this global target "
        "(default: None, no allocation)",
    )
    parser.add_argument(
        "--epsilon",
        type=float,
        default=DEFAULT_EPSILON,
        metavar="E",
        help="with --sparsity: the allocation spread, block sparsities lie in [1-E, 1+E] times the target",
    )
    parser.add_argument(
        "--esd-plots",
        type=int,
        default=3,
        metavar="N",
        help="with --output, plot the ESD and fitted power law of N matrices, from lowest to highest alpha",
    )


def _selected_matrices(matrices: list, metric: str, count: int) -> list:
    """The matrices worth looking at: extremes and middle of the metric, evenly spaced in rank."""
    ranked = sorted(matrices, key=lambda m: m.metrics[metric])
    if count <= 0 or not ranked:
        return []
    if count == 1:
        return [ranked[len(ranked) // 2]]
    positions = sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)})
    return [ranked[p] for p in positions]


def _write_plots(
    model, report, metric: str, sparsities: list[float] | None, output: Path, count: int,
    before: list[dict[str, float]] | None = None,
) -> list[Path]:
    from ..esd import matrix_eigenvalues
    from ..matrices import model_weights
    from ..plotting import plot_block_profile, plot_esd_fit

    scores = [block.metrics[metric] for block in report.blocks]
    if before:  # a pruned folder: its recorded metric before pruning, and the one measured now
        written = [plot_block_profile([b[metric] for b in before], sparsities, output / f"block_{metric}.png",
                                      metric_name=metric, after_scores=scores)]
    else:
        written = [plot_block_profile(scores, sparsities, output / f"block_{metric}.png", metric_name=metric)]
    prunable = {m.name: m for block in model_weights(model)[1] for m in block.matrices}
    for matrix in _selected_matrices(report.matrices, metric, count):
        eigenvalues = matrix_eigenvalues(prunable[matrix.name].read())
        alpha = matrix.metrics["alpha_hill"]
        title = f"{matrix.name}: alpha_hill={alpha:.2f}"
        path = output / f"esd_{matrix.name}.png"
        written.append(plot_esd_fit(eigenvalues, matrix.xmin, alpha, path, title))
    return written


def metrics_before_pruning(model: str, blocks: int) -> list[dict[str, float]] | None:
    """Per-block metrics a pruned folder recorded before it was pruned (``esd_blocks`` of its
    alpha_pruning.json), or None for a model that was not pruned here or whose analysis did not run."""
    from ..checkpoint.target import METADATA_FILE

    path = Path(model).expanduser() / METADATA_FILE
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text()).get("esd_blocks") or []
    return recorded if len(recorded) == blocks else None


def run(args: argparse.Namespace) -> int:
    from ..allocation import alpha_allocation, check_epsilon, check_sparsity

    metrics = list(dict.fromkeys(name for group in (args.metric or [list(METRICS)]) for name in group))
    primary = metrics[0]
    if args.sparsity is not None:
        check_sparsity(args.sparsity)
        check_epsilon(args.epsilon)
    if args.output is not None:
        check_output_dir(args.output, args.overwrite)
    check_device_map(args.device_map)

    stages = Stages(3 if args.output is not None else 2, quiet=args.quiet)
    with stages.stage(f"Loading {args.model}"):
        from ..models import load_model

        model, _ = load_model(args.model, **load_kwargs(args))
    with stages.stage("ESD analysis"):
        from ..esd import analyze

        # alpha_hill is always fitted: the ESD plots draw its power law even when it is not displayed.
        report = analyze(model, metrics=list(dict.fromkeys([*metrics, "alpha_hill"])), show_progress=not args.quiet)

    sparsities = None
    if args.sparsity is not None:
        scores, counts = report.scores(primary)
        sparsities = alpha_allocation(scores, counts, args.sparsity, epsilon=args.epsilon)

    before = metrics_before_pruning(args.model, len(report.blocks))
    before = before if before and all(primary in b for b in before) else None
    headers = ["block", "params", *metrics] + (["sparsity"] if sparsities else []) + \
        ([f"{primary} before pruning"] if before else [])
    rows = [
        [b.index, b.num_params, *(b.metrics[m] for m in metrics)] + ([sparsities[i]] if sparsities else [])
        + ([before[i][primary]] if before else [])
        for i, b in enumerate(report.blocks)
    ]
    print(f"ESD analysis of {args.model}: {len(report.matrices)} matrices in {len(report.blocks)} blocks")
    print(format_table(headers, rows))
    if before:
        now = [b.metrics[primary] for b in report.blocks]
        print(f"mean block {primary}: before pruning {sum(b[primary] for b in before) / len(before):.4f} "
              f"(recorded in {args.model}), now {sum(now) / len(now):.4f}")
    if sparsities:
        params = [b.num_params for b in report.blocks]
        total = sum(s * p for s, p in zip(sparsities, params)) / sum(params)
        print(
            f"allocation (alpha, metric={primary}, epsilon={args.epsilon}): target {args.sparsity:.4f}, "
            f"weighted mean {total:.4f}, min {min(sparsities):.4f}, max {max(sparsities):.4f}"
        )

    if args.output is not None:
        from ..distributed import current as current_parallel

        current_parallel().on_main(lambda: _write_outputs(args, model, report, primary, sparsities, before, stages),
                                   f"writing {args.output} on rank 0")
    return 0


def _write_outputs(args: argparse.Namespace, model, report, primary: str, sparsities, before,
                   stages: Stages) -> None:
    """esd.json, allocation.json and the plots (rank 0 only under torchrun)."""
    with stages.stage(f"Writing {args.output}"):
        args.output.mkdir(parents=True, exist_ok=True)
        data = report.to_dict()
        if before:  # the pruned folder's own record of its blocks before pruning, beside the analysis now
            data["blocks_before_pruning"] = before
        (args.output / "esd.json").write_text(json.dumps(data, indent=2))
        if sparsities:
            allocation = {
                "sparsity": args.sparsity,
                "epsilon": args.epsilon,
                "metric": primary,
                "block_sparsities": sparsities,
            }
            (args.output / "allocation.json").write_text(json.dumps(allocation, indent=2))
        plots = _write_plots(model, report, primary, sparsities, args.output, args.esd_plots, before)
    print(f"wrote {args.output / 'esd.json'} and {len(plots)} plot(s) to {args.output}")
