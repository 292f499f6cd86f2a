"""Charts for reports and model cards.

matplotlib is imported lazily inside each function (with the non-interactive Agg backend) so that
``import optimum_alpha`` stays light and works on headless machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _pyplot():
    """Return ``matplotlib.pyplot`` bound to the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _prepare_path(path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def plot_block_profile(
    block_scores: Sequence[float],
    block_sparsities: Sequence[float] | None,
    path: str | Path,
    metric_name: str = "alpha_hill",
    after_scores: Sequence[float] | None = None,
) -> Path:
    """Plot the per-block metric (bars) and, if given, the per-block sparsity (line) against depth.

    This is the picture AlphaPruning is about: blocks with a lower heavy-tail exponent are better
    trained and receive less sparsity. ``after_scores`` (the metric re-measured after pruning) adds a
    second bar per block and both means as dashed lines, as in the paper's Figure 5. Returns the PNG path.
    """
    scores = [float(s) for s in block_scores]
    if not scores:
        raise ValueError("plot_block_profile needs at least one block score")
    for name, values in (("block sparsities", block_sparsities), ("scores after pruning", after_scores)):
        if values is not None and len(values) != len(scores):
            raise ValueError(f"got {len(scores)} block scores but {len(values)} {name}; pass one per block")
    plt = _pyplot()
    out = _prepare_path(path)
    depth = list(range(len(scores)))
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    try:
        if after_scores is None:
            ax.bar(depth, scores, color="tab:blue", alpha=0.7, label=metric_name)
        else:
            after = [float(s) for s in after_scores]
            ax.bar([d - 0.2 for d in depth], scores, width=0.4, color="tab:blue", alpha=0.7,
                   label=f"{metric_name} before pruning")
            ax.bar([d + 0.2 for d in depth], after, width=0.4, color="tab:orange", alpha=0.8,
                   label=f"{metric_name} after pruning")
            for values, color, when in ((scores, "tab:blue", "before"), (after, "tab:orange", "after")):
                mean = sum(values) / len(values)
                ax.axhline(mean, color=color, linestyle="--", linewidth=1, label=f"mean {when}: {mean:.3f}")
        ax.set_xlabel("block index (depth)")
        ax.set_ylabel(metric_name, color="tab:blue")
        ax.tick_params(axis="y", labelcolor="tab:blue")
        handles, labels = ax.get_legend_handles_labels()
        if block_sparsities is not None:
            ax2 = ax.twinx()
            sparsities = [float(s) for s in block_sparsities]
            ax2.plot(depth, sparsities, color="tab:red", marker="o", label="sparsity")
            ax2.set_ylabel("sparsity", color="tab:red")
            ax2.set_ylim(0.0, 1.0)
            ax2.tick_params(axis="y", labelcolor="tab:red")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="upper left", fontsize="small" if after_scores is not None else None)
        when = " before/after pruning" if after_scores is not None else ""
        ax.set_title(f"Per-block {metric_name}{when}" + (" and sparsity" if block_sparsities is not None else ""))
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def plot_esd_fit(
    eigenvalues: "torch.Tensor", xmin: float, alpha: float, path: str | Path, title: str
) -> Path:
    """Plot the empirical spectral density on log-log axes with the fitted power-law tail.

    The fitted density ``p(x) ∝ x^-alpha`` for ``x >= xmin`` is scaled so it integrates to the
    fraction of eigenvalues in the tail, which makes it overlay the histogram; ``xmin`` is marked.
    """
    import numpy as np

    values = eigenvalues.detach().double().flatten().cpu().numpy()
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        raise ValueError("plot_esd_fit needs at least one positive finite eigenvalue")
    if xmin <= 0:
        raise ValueError(f"xmin must be positive, got {xmin}")
    plt = _pyplot()
    out = _prepare_path(path)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo * 1.01 + 1e-12
    bins = np.logspace(np.log10(lo), np.log10(hi), num=min(100, max(10, values.size // 5)))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        ax.hist(values, bins=bins, density=True, color="tab:gray", alpha=0.6, label="ESD")
        tail = values[values >= xmin]
        if tail.size > 0 and alpha > 1:
            xs = np.logspace(np.log10(xmin), np.log10(max(hi, xmin * 1.01)), 100)
            # Normalised power law on [xmin, inf): (alpha-1)/xmin * (x/xmin)^-alpha, times the tail mass.
            density = (alpha - 1.0) / xmin * (xs / xmin) ** (-alpha) * (tail.size / values.size)
            ax.plot(xs, density, color="tab:red", linewidth=2, label=f"power law, alpha={alpha:.2f}")
        ax.axvline(xmin, color="tab:green", linestyle="--", label=f"xmin={xmin:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(loc="lower left")
        fig.tight_layout()
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out
