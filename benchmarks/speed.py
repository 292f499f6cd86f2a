"""Speed of optimum-alpha on SmolLM2-135M: the ESD analysis against the straightforward method, and where
the time of a pruning run goes.

    python benchmarks/speed.py --part esd --repeats 3      # fast vs straightforward ESD, same run
    python benchmarks/speed.py --part prune --nsamples 64 --seqlen 512
    python benchmarks/speed.py --part llama7b --device cuda  # ESD of a random LLaMA-7B-shaped model
    python benchmarks/speed.py --part farms --repeats 3    # FARMS (esd_sampling="farms") vs the full ESD
    python benchmarks/speed.py --part reconstruct --block 10 --nsamples 8 --seqlen 512   # one block's refit

The straightforward method is the one the paper describes: float32 ``torch.linalg.svdvals`` of each matrix,
then a Python loop over the xmin candidates (every eigenvalue up to 1.5x the ESD peak, as the reference
code), one Hill estimate and one KS distance per candidate. The pruning split is measured by wrapping the
library's stages with timers from the outside (no library change): calibration capture, statistics pass
(block forward + accumulation), mask/solver work, propagation pass, weight write-back.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ModelFactory, Session, machine_description, markdown_table  # noqa: E402

import torch  # noqa: E402

# The shapes of one LLaMA-7B block: q, k, v, o (4096 x 4096), gate, up (11008 x 4096), down (4096 x 11008).
LLAMA7B_SHAPES = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]


# ------------------------------------------------------------------------------------------------- ESD
def naive_spectrum(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues the straightforward way: float32 singular values of W, squared, ascending."""
    return torch.sort(torch.linalg.svdvals(weight.detach().float()) ** 2).values


def naive_hill_loop(eigs: torch.Tensor) -> float:
    """PL_Alpha_Hill with one Python loop iteration per xmin candidate (eigenvalues up to 1.5x the peak)."""
    log10 = torch.log10(eigs)
    counts = torch.histc(log10, bins=100, min=float(log10.min()), max=float(log10.max()))
    width = (float(log10.max()) - float(log10.min())) / 100
    peak = 10 ** (float(log10.min()) + int(torch.argmax(counts)) * width)
    best_alpha, best_distance = 1.0, math.inf
    n_total = eigs.numel()
    for i in range(n_total - 1):
        xmin = eigs[i]
        if float(xmin) > 1.5 * peak:
            break
        tail = eigs[i:]
        n = tail.numel()
        alpha = 1 + n / float(torch.sum(torch.log(tail / xmin)))
        fitted = 1 - (tail / xmin) ** (1 - alpha)
        empirical = torch.arange(n, dtype=tail.dtype, device=tail.device) / n
        distance = float(torch.max(torch.abs(fitted - empirical)))
        if distance < best_distance:
            best_alpha, best_distance = alpha, distance
    return best_alpha


def naive_alpha(weight: torch.Tensor) -> float:
    return naive_hill_loop(naive_spectrum(weight))


def prunable_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    from optimum_alpha.matrices import model_weights

    return [(m.name, m.read()) for block in model_weights(model)[1] for m in block.matrices]


def _timed_map(function: Callable, items: Sequence) -> tuple[list, float]:
    device = str(items[0].device) if items and isinstance(items[0], torch.Tensor) else "cpu"
    _sync(device)
    start = time.perf_counter()
    results = [function(item) for item in items]
    _sync(device)
    return results, time.perf_counter() - start


def esd_table(session: Session, repeats: int) -> str:
    """Both methods on the same weights in the same process, split into spectrum and fit; best of repeats."""
    from optimum_alpha.esd import matrix_eigenvalues, spectrum_metrics

    weights = [w for _, w in prunable_weights(session.model)]
    best: dict[str, float] = defaultdict(lambda: math.inf)
    for _ in range(repeats):
        slow_eigs, t = _timed_map(naive_spectrum, weights)
        best["slow_spectrum"] = min(best["slow_spectrum"], t)
        slow, t = _timed_map(naive_hill_loop, slow_eigs)
        best["slow_fit"] = min(best["slow_fit"], t)
        fast_eigs, t = _timed_map(matrix_eigenvalues, weights)
        best["fast_spectrum"] = min(best["fast_spectrum"], t)
        fits, t = _timed_map(spectrum_metrics, fast_eigs)
        best["fast_fit"] = min(best["fast_fit"], t)
    fast = [metrics["alpha_hill"] for metrics, _ in fits]
    # The same loop on the float64 spectrum isolates the fit from the spectrum's precision.
    loop64 = [naive_hill_loop(e) for e in fast_eigs]
    fit_diffs = [abs(a - b) for a, b in zip(loop64, fast)]
    diffs = [abs(a - b) for a, b in zip(slow, fast)]
    fit_diff, diff = max(fit_diffs), max(diffs)
    worst = max(range(len(fast)), key=lambda i: abs(slow[i] - fast[i]))
    slow_total = best["slow_spectrum"] + best["slow_fit"]
    fast_total = best["fast_spectrum"] + best["fast_fit"]
    rows = [
        ["straightforward (float32 svdvals + loop)", best["slow_spectrum"], best["slow_fit"], slow_total,
         "alpha_hill", "1.0x"],
        ["optimum-alpha (float64 Gram + vectorised)", best["fast_spectrum"], best["fast_fit"], fast_total,
         "all 6 metrics", f"{slow_total / fast_total:.1f}x"],
        ["ratio (straightforward / optimum-alpha)", f"{best['slow_spectrum'] / best['fast_spectrum']:.1f}x",
         f"{best['slow_fit'] / best['fast_fit']:.1f}x", f"{slow_total / fast_total:.1f}x", "", ""],
    ]
    table = markdown_table(["method", "spectrum s", "fit s", "total s", "computes", "speed-up"], rows)
    return (f"{len(weights)} matrices, best of {repeats}\n\n{table}\n\n"
            f"max |Δα| = {diff:.2e} end to end (float32 vs float64 spectra; worst matrix #{worst}: "
            f"{slow[worst]:.4f} vs {fast[worst]:.4f}); "
            f"{sum(d > 1e-3 for d in diffs)} matrices differ by > 1e-3, "
            f"median {statistics.median(diffs):.1e}\n"
            f"max |Δα| = {fit_diff:.2e} for the fit alone "
            "(candidate loop vs vectorised, same float64 spectrum); "
            f"{sum(d > 1e-3 for d in fit_diffs)} matrices differ by > 1e-3")


def farms_table(session: Session, repeats: int) -> str:
    """The full ESD against FARMS's sampled ESD on the same weights: seconds (best of repeats), eigenvalues
    per matrix, and how far the alphas and their block ranking move."""
    from optimum_alpha.esd import farms_hill_fit, matrix_eigenvalues, spectrum_metrics
    from optimum_alpha.esd_sampling import FarmsOptions, farms_eigenvalues

    named = prunable_weights(session.model)
    weights = [w for _, w in named]
    options = FarmsOptions()
    best: dict[str, float] = defaultdict(lambda: math.inf)
    for _ in range(repeats):
        full_eigs, t = _timed_map(matrix_eigenvalues, weights)
        best["full_spectrum"] = min(best["full_spectrum"], t)
        full, t = _timed_map(spectrum_metrics, full_eigs)
        best["full_fit"] = min(best["full_fit"], t)
        farms_eigs, t = _timed_map(lambda w: farms_eigenvalues(w, options), weights)
        best["farms_spectrum"] = min(best["farms_spectrum"], t)
        farms, t = _timed_map(lambda e: spectrum_metrics(e, fit=farms_hill_fit(e)), farms_eigs)
        best["farms_fit"] = min(best["farms_fit"], t)
    totals = {k: best[f"{k}_spectrum"] + best[f"{k}_fit"] for k in ("full", "farms")}
    rows = [[label, best[f"{key}_spectrum"], best[f"{key}_fit"], totals[key],
             f"{statistics.mean(e.numel() for e in eigs):.0f}"]
            for label, key, eigs in (("full ESD (fix-finger peak)", "full", full_eigs),
                                     ("FARMS 100 x 200, 10 x 10 windows (xmin mid)", "farms", farms_eigs))]
    rows.append(["ratio (FARMS / full)", f"{best['farms_spectrum'] / best['full_spectrum']:.2f}x",
                 f"{best['farms_fit'] / best['full_fit']:.2f}x", f"{totals['farms'] / totals['full']:.2f}x", ""])
    table = markdown_table(["ESD", "spectrum s", "fit s", "total s", "eigenvalues / matrix"], rows)
    full_alpha = [m["alpha_hill"] for m, _ in full]
    farms_alpha = [m["alpha_hill"] for m, _ in farms]
    by_shape: dict[tuple, list[float]] = defaultdict(list)
    for (_, w), a, f in zip(named, full_alpha, farms_alpha):
        by_shape[tuple(w.shape)].append(f - a)
    shifts = ", ".join(f"{r}x{c}: {statistics.mean(d):+.2f}" for (r, c), d in sorted(by_shape.items()))
    return (f"{len(weights)} matrices, best of {repeats}\n\n{table}\n\n"
            f"alpha_hill, full -> FARMS: mean {statistics.mean(full_alpha):.3f} -> {statistics.mean(farms_alpha):.3f};"
            f" mean shift by matrix shape: {shifts}")


def reconstruct_table(session: Session, methods: Sequence[str], nsamples: int, seqlen: int, sparsity: float,
                      block_index: int) -> str:
    """One block pruned to ``sparsity`` by each method (inputs from the dense blocks before it), then refitted
    by block reconstruction: the block's output error against the dense block before and after, and seconds."""
    from optimum_alpha.calibration import capture_block_inputs, run_block
    from optimum_alpha.data import sample_calibration
    from optimum_alpha.matrices import model_weights
    from optimum_alpha.pruning import get_pruner_class
    from optimum_alpha.reconstruction import reconstruct_block
    from optimum_alpha.statistics import collect_block_statistics

    session.restore()
    model = session.model
    sample = sample_calibration(session.tokenizer, "c4", nsamples, seqlen, 0, "document")
    _, weights = model_weights(model)
    blocks = session.pruner.blocks
    inputs = capture_block_inputs(model, blocks, sample.ids)
    for index in range(block_index):  # the dense prefix, so the block sees what it would see first in a run
        inputs.hidden_states = run_block(blocks[index], inputs, index)
    block, matrices = blocks[block_index], weights[block_index].matrices
    dense = {m.name: m.read().clone() for m in matrices}
    dense_out = run_block(block, inputs, block_index)
    scale = sum(float(o.pow(2).sum()) for o in dense_out)

    def error(new: dict[str, torch.Tensor]) -> float:
        for m in matrices:
            m.write(new[m.name])
        out = run_block(block, inputs, block_index)
        for m in matrices:
            m.write(dense[m.name])
        return sum(float((o - d).pow(2).sum()) for o, d in zip(out, dense_out)) / scale

    rows = []
    for method in methods:
        cls = get_pruner_class(method)
        pruners = {m.name: cls(m.name) for m in matrices}
        start = time.perf_counter()
        if cls.needs_calibration:
            collect_block_statistics(block, block_index, matrices, pruners, inputs)
        pruned = {m.name: pruners[m.name].prune(m.read(), sparsity) for m in matrices}
        prune_s = time.perf_counter() - start
        refit = reconstruct_block(block, block_index, matrices, pruned, inputs)
        before, after = error(pruned), error(refit.weights)
        rows.append([method, f"{sparsity:.0%}", block_index, f"{before:.4g}", f"{after:.4g}",
                     f"{after / before:.3f}", f"{prune_s:.1f}", f"{refit.seconds:.1f}"])
    table = markdown_table(["method", "sparsity", "block", "rel. output error, pruned", "after reconstruction",
                            "ratio", "prune s", "reconstruct s"], rows)
    return f"{nsamples} x {seqlen} C4 calibration tokens, seed 0\n\n{table}"


def llama7b_table(blocks: int, device: str, seed: int = 0) -> str:
    """ESD of random matrices with LLaMA-7B's shapes, one at a time (no model needs to fit in memory)."""
    from optimum_alpha.esd import hill_fit, matrix_eigenvalues

    generator = torch.Generator(device=device).manual_seed(seed)
    eig_s = fit_s = 0.0
    for _ in range(blocks):
        for shape in LLAMA7B_SHAPES:
            weight = torch.randn(*shape, generator=generator, device=device) / math.sqrt(shape[1])
            _sync(device)
            start = time.perf_counter()
            eigenvalues = matrix_eigenvalues(weight)
            _sync(device)
            middle = time.perf_counter()
            hill_fit(eigenvalues)
            _sync(device)
            eig_s += middle - start
            fit_s += time.perf_counter() - middle
    total = eig_s + fit_s
    scale = 32 / blocks
    rows = [[f"{blocks} of 32 blocks", f"{eig_s:.1f}", f"{fit_s:.1f}", f"{total:.1f}",
             f"{total * scale:.1f}"]]
    return (f"device {device}\n\n" + markdown_table(
        ["measured", "eigenvalues s", "Hill fit s", "total s", "32 blocks s (extrapolated)"], rows))


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ prune split
_clock = time.perf_counter  # --clock cpu: process CPU time, robust on a shared, loaded machine
@contextlib.contextmanager
def _patched(owner: Any, name: str, wrapper_factory: Callable[[Callable], Callable]) -> Iterator[None]:
    """Replace ``owner.name`` by ``wrapper_factory(original)`` for the duration (keeps staticmethods)."""
    own = name in vars(owner)
    raw = inspect.getattr_static(owner, name)
    is_static = isinstance(raw, staticmethod)
    wrapper = wrapper_factory(raw.__func__ if is_static else getattr(owner, name))
    setattr(owner, name, staticmethod(wrapper) if is_static else wrapper)
    try:
        yield
    finally:
        if own:
            setattr(owner, name, raw)
        else:
            delattr(owner, name)  # it was inherited: uncover the base class's again


def _timed(bucket: dict[str, float], label: Callable[..., str] | str) -> Callable[[Callable], Callable]:
    def factory(function: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = _clock()
            try:
                return function(*args, **kwargs)
            finally:
                key = label(*args, **kwargs) if callable(label) else label
                bucket[key] += _clock() - start

        return wrapper

    return factory


@contextlib.contextmanager
def stage_timers(method: str) -> Iterator[dict[str, float]]:
    """Time the pruning stages of ``AlphaPruner.prune`` by wrapping what its stage modules call."""
    import optimum_alpha.calibration as calibration_module
    import optimum_alpha.statistics as statistics_module
    import optimum_alpha.unstructured as unstructured_module
    from optimum_alpha.pruning import get_pruner_class

    layer_cls = get_pruner_class(method)
    times: dict[str, float] = defaultdict(float)

    def run_block_label(block: Any, inputs: Any, block_index: int, keep_outputs: bool = True) -> str:
        return "propagation" if keep_outputs else "statistics_forward"

    patches = [
        (calibration_module, "sample_calibration", _timed(times, "calibration_io")),
        (calibration_module, "capture_block_inputs", _timed(times, "capture")),
        (unstructured_module, "run_block", _timed(times, run_block_label)),
        (statistics_module, "run_block", _timed(times, run_block_label)),
        (layer_cls, "add_batch", _timed(times, "statistics_accumulate")),
        (layer_cls, "prune", _timed(times, "mask_solver")),
        (unstructured_module, "write_block", _timed(times, "write")),
        (unstructured_module, "compute_targets", _timed(times, "allocation")),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, factory in patches:
            stack.enter_context(_patched(owner, name, factory))
        yield times


def forward_floor(session: Session, nsamples: int, seqlen: int, seed: int) -> float:
    """Seconds of one dense pass of all blocks over the calibration tokens (the pipeline needs two)."""
    from optimum_alpha.calibration import capture_block_inputs, run_block
    from optimum_alpha.data import calibration_windows

    session.restore()
    ids = calibration_windows(session.tokenizer, "c4", nsamples, seqlen, seed)
    inputs = capture_block_inputs(session.model, session.pruner.blocks, ids)
    start = _clock()
    with torch.no_grad():
        for index, block in enumerate(session.pruner.blocks):
            inputs.hidden_states = run_block(block, inputs, index)
    return _clock() - start


def prune_table(session: Session, methods: Sequence[str], nsamples: int, seqlen: int, sparsity: float) -> str:
    from optimum_alpha import AlphaPruningConfig

    floor = 2 * forward_floor(session, nsamples, seqlen, 0)
    columns = ["allocation", "capture", "statistics_forward", "statistics_accumulate", "mask_solver",
               "propagation", "write"]
    rows, notes = [], []
    for method in methods:
        session.restore()
        config = AlphaPruningConfig(sparsity=sparsity, method=method, allocation="alpha", nsamples=nsamples,
                                    seqlen=seqlen)
        with stage_timers(method) as times:
            start = _clock()
            session.pruner.prune(config, show_progress=session.show_progress)
            total = _clock() - start
        # The statistics pass includes the accumulation done inside its forward hooks.
        times["statistics_forward"] -= times["statistics_accumulate"]
        other = total - sum(times[c] for c in columns)
        cells = [times[c] for c in columns]
        # ``other`` already holds the calibration sampling (timed, but not a column): count it once.
        rows.append([method] + [f"{v:.2f}" for v in cells] + [f"{other:.2f}", f"{total:.2f}",
                                                              f"{total / floor:.2f}"])
        main_stage = columns[max(range(len(columns)), key=lambda i: cells[i])]
        notes.append(f"- {method}: {main_stage} dominates ({max(cells) / total:.0%} of {total:.1f} s)")
    headers = ["method", "allocation s", "capture s", "stats forward s", "stats accumulate s", "mask/solver s",
               "propagation s",
               "write s", "I/O + other s", "total s", "total / floor"]
    return (f"clock: {'CPU seconds of this process' if _clock is time.process_time else 'wall seconds'}; "
            f"calibration {nsamples} x {seqlen} tokens, sparsity {sparsity:.0%} (alpha allocation, ESD done "
            f"before), forward floor = 2 dense passes of all blocks = {floor:.2f} s\n\n"
            + markdown_table(headers, rows) + "\n\n" + "\n".join(notes))


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--part", choices=["esd", "prune", "llama7b", "farms", "reconstruct", "all"], default="all")
    p.add_argument("--block", type=int, default=10, help="--part reconstruct: the block refitted")
    p.add_argument("--repeats", type=int, default=3, help="ESD timing repeats (best is reported)")
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model (and the LLaMA-7B-shaped matrices) live")
    p.add_argument("--llama7b-blocks", type=int, default=32, help="time this many blocks, extrapolate to 32")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="prune split timed in wall seconds or in this process's CPU seconds (one thread: the "
                        "honest measure on a loaded machine)")
    return p


def main(argv: Sequence[str] | None = None, model_factory: ModelFactory | None = None) -> str:
    args = build_parser().parse_args(argv)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    parts = ["esd", "prune"] if args.part == "all" else [args.part]
    sections = [f"machine: {machine_description()}"]
    session = None
    if {"esd", "prune", "farms", "reconstruct"} & set(parts):
        session = Session(args.model, factory=model_factory, show_progress=args.progress, device=args.device)
        sections.append(f"load + first ESD analysis {session.setup_s:.1f} s")
    if "esd" in parts:
        sections.append("## ESD analysis\n\n" + esd_table(session, args.repeats))
    if "farms" in parts:
        sections.append("## FARMS vs the full ESD\n\n" + farms_table(session, args.repeats))
    if "reconstruct" in parts:
        sections.append("## Block reconstruction of one block\n\n" + reconstruct_table(
            session, args.methods, args.nsamples, args.seqlen, args.sparsity, args.block))
    if "prune" in parts:
        sections.append("## Pruning time split\n\n"
                        + prune_table(session, args.methods, args.nsamples, args.seqlen, args.sparsity))
    if "llama7b" in parts:
        sections.append("## ESD of a LLaMA-7B-shaped random model\n\n"
                        + llama7b_table(args.llama7b_blocks, args.device))
    text = "\n\n".join(sections) + "\n"
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
