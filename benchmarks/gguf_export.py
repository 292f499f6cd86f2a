"""GGUF export measured in llama.cpp: speed, file size and perplexity of dense, quantised, pruned and
width-pruned SmolLM2-135M (docs/gguf.md).

Every variant is exported with ``write_gguf`` and run by llama.cpp itself (``llama-cpp-python``): prompt
processing of ``--prompt`` tokens in one batch and ``--generate`` single-token decode steps (``llama-bench``'s
pp/tg protocol), at each of ``--threads``, ``--repeats`` times interleaved (medians reported, with the load
average seen during the timings); WikiText-2 perplexity from llama.cpp's logits on the same token windows that
transformers scores on the same dequantised weights (the "hf ppl" column; the two must agree within 1 %).

    OMP_NUM_THREADS=1 nice python benchmarks/gguf_export.py            # the docs' table
    python benchmarks/gguf_export.py --skip-llama-cpp                   # sizes and transformers perplexity only
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# Run as a script, this file's folder comes first on sys.path and its name would hide the `gguf` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from benchmarks.common import ModelFactory, machine_description, markdown_table  # noqa: E402

# name -> (how the model is pruned, GGUF type); "dense" variants share the loaded model
VARIANTS: dict[str, tuple[str, str]] = {
    "dense F16": ("dense", "f16"),
    "dense Q8_0": ("dense", "q8_0"),
    "dense Q5_0": ("dense", "q5_0"),
    "dense auto:5.0": ("dense", "auto:5.0"),
    "dense auto:5.5": ("dense", "auto:5.5"),
    "Wanda+alpha 50 % Q8_0": ("wanda50", "q8_0"),
    "width 30 % alpha+refit F16": ("width-alpha", "f16"),
    "width 30 % alpha+refit Q8_0": ("width-alpha", "q8_0"),
    "width 30 % uniform+refit F16": ("width-uniform", "f16"),
    "width 30 % uniform+refit Q8_0": ("width-uniform", "q8_0"),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows (C4) of the pruning runs")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    parser.add_argument("--eval-seqlen", type=int, default=512, help="WikiText-2 window length")
    parser.add_argument("--max-windows", type=int, default=8, help="WikiText-2 test windows")
    parser.add_argument("--prompt", type=int, default=512, help="prompt-processing tokens")
    parser.add_argument("--generate", type=int, default=128, help="decode steps")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-llama-cpp", action="store_true", help="no llama.cpp columns (sizes, hf ppl)")
    parser.add_argument("--hf-ppl", nargs="*", default=None, metavar="VARIANT",
                        help="variants whose transformers perplexity is computed (default: all; it is the slow part)")
    parser.add_argument("--output-dir", type=Path, default=None, help="keep the .gguf files (and rows.json) here")
    parser.add_argument("--reuse", action="store_true",
                        help="take the files and their sizes/hf ppl from --output-dir (an earlier --skip-llama-cpp "
                             "run) and run only the llama.cpp part")
    return parser.parse_args(argv)


@dataclass
class Row:
    name: str
    gguf_type: str
    arch: str
    file_mib: float
    block_bits: float
    ppl_hf: float | None
    ppl_cpp: float | None = None
    speeds: dict[int, tuple[list[float], list[float]]] | None = None  # threads -> (pp runs, tg runs)


def prepare(kind: str, base: Any, args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    """The model of one variant kind (a pruned copy of the dense one) and its pruning seconds."""
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    if kind == "dense":
        return base.model, 0.0
    pruner = AlphaPruner(copy.deepcopy(base.model), base.tokenizer, base.source)
    pruner.esd_report = base.esd_report  # of the dense weights, as the allocations need
    common = dict(nsamples=args.nsamples, seqlen=args.seqlen, allocation="alpha")
    if kind == "wanda50":
        config = AlphaPruningConfig(sparsity=0.5, method="wanda", **common)
    else:
        common["allocation"] = "alpha" if kind == "width-alpha" else "uniform"
        config = AlphaPruningConfig(structure="width", sparsity=0.3, **common)
    start = time.perf_counter()
    pruner.prune(config, show_progress=False)
    return pruner.model, time.perf_counter() - start


def hf_perplexity(model: torch.nn.Module, gguf_type: str, windows: torch.Tensor) -> float:
    """transformers' perplexity of ``model`` with the file's dequantised weights, on the same windows."""
    from optimum_alpha.evaluate import window_perplexity
    from optimum_alpha.gguf import dequantized_state_dict

    quantized = copy.deepcopy(model)
    quantized.load_state_dict(dequantized_state_dict(model, gguf_type), strict=False)
    return window_perplexity(quantized, windows)


def load_average() -> float:
    return os.getloadavg()[0]


def time_files(rows: list[Row], paths: dict[str, Path], tokens: list[int], args: argparse.Namespace) -> list[float]:
    """Fill each row's speeds, repeats interleaved across files; returns the load averages seen."""
    from optimum_alpha.gguf import llama_cpp

    loads = []
    for _ in range(args.repeats):
        for row in rows:
            for threads in args.threads:
                pp, tg = llama_cpp.speed(paths[row.name], tokens, prompt=args.prompt, generate=args.generate,
                                         threads=threads)
                row.speeds.setdefault(threads, ([], []))
                row.speeds[threads][0].append(pp)
                row.speeds[threads][1].append(tg)
                loads.append(load_average())
    return loads


def main(argv: Sequence[str] | None = None, model_factory: ModelFactory | None = None) -> str:
    from optimum_alpha import AlphaPruner
    from optimum_alpha.data import evaluation_tokens
    from optimum_alpha.gguf import write_gguf

    args = parse_args(argv)
    start = time.perf_counter()
    if args.reuse:
        return run_llama_cpp(args, argv, start)
    if model_factory is None:
        base = AlphaPruner.from_pretrained(args.model, show_progress=False)
    else:
        net, tokenizer = model_factory()
        base = AlphaPruner.from_pretrained(net, tokenizer=tokenizer, show_progress=False)
    if any(VARIANTS[v][0] != "dense" for v in args.variants):
        base.analyze(show_progress=False)
    stream = evaluation_tokens(base.tokenizer, "wikitext2")
    windows = stream[: args.max_windows * args.eval_seqlen].reshape(args.max_windows, args.eval_seqlen)
    folder = args.output_dir or Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows, paths, models, notes = [], {}, {}, []
    loads: list[float] = []
    for name in args.variants:
        kind, gguf_type = VARIANTS[name]
        if kind not in models:
            models[kind] = prepare(kind, base, args)
            if models[kind][1]:
                notes.append(f"{kind}: pruned in {models[kind][1]:.0f} s")
        model = models[kind][0]
        path = folder / (name.replace(" ", "_").replace("%", "pct").replace("+", "-").replace(":", "") + ".gguf")
        summary = write_gguf(model, path, tokenizer=base.tokenizer, gguf_type=gguf_type, overwrite=True,
                             show_progress=False)
        paths[name] = path
        wanted = args.hf_ppl is None or name in args.hf_ppl
        rows.append(Row(name, gguf_type, summary.arch, summary.file_bytes / 2**20, summary.block_bits,
                        hf_perplexity(model, gguf_type, windows) if wanted else None, speeds={}))
        print(f"{name}: {summary.describe()}; hf ppl {rows[-1].ppl_hf}", flush=True)
        if not args.skip_llama_cpp:  # measured now, so that a run cut short still has its first rows
            measure(rows[-1], path, windows.tolist(), stream[: args.prompt + args.generate].tolist(), args, loads)
            (folder / "partial.md").write_text(report(rows, args, argv, loads, notes, time.perf_counter() - start))
    state = {"rows": [dataclasses.asdict(r) for r in rows], "paths": {k: str(v) for k, v in paths.items()},
             "windows": windows.tolist(), "tokens": stream[: args.prompt + args.generate].tolist(), "notes": notes}
    (folder / "rows.json").write_text(json.dumps(state))
    text = report(rows, args, argv, loads, notes, time.perf_counter() - start)
    print(text, flush=True)
    return text


def measure(row: Row, path: Path, windows: list[list[int]], tokens: list[int], args: argparse.Namespace,
            loads: list[float]) -> None:
    """llama.cpp's perplexity and speeds of one file (repeats interleaved across thread counts)."""
    from optimum_alpha.gguf import llama_cpp

    row.ppl_cpp = llama_cpp.perplexity(path, windows, threads=max(args.threads))
    for _ in range(args.repeats):
        for threads in args.threads:
            pp, tg = llama_cpp.speed(path, tokens, prompt=args.prompt, generate=args.generate, threads=threads)
            row.speeds.setdefault(threads, ([], []))
            row.speeds[threads][0].append(pp)
            row.speeds[threads][1].append(tg)
            loads.append(load_average())
    print(f"{row.name}: llama.cpp ppl {row.ppl_cpp:.3f}, speeds {row.speeds}", flush=True)


def run_llama_cpp(args: argparse.Namespace, argv: Sequence[str] | None, start: float,
                  folder: Path | None = None) -> str:
    """The llama.cpp columns for the files (and rows) an export run left in ``folder``."""
    from optimum_alpha.gguf import llama_cpp

    folder = folder or args.output_dir
    if folder is None or not (folder / "rows.json").is_file():
        raise SystemExit("--reuse needs --output-dir of an earlier run (its rows.json)")
    state = json.loads((folder / "rows.json").read_text())
    rows = [Row(**{**r, "speeds": {}}) for r in state["rows"] if r["name"] in args.variants]
    paths = {k: Path(v) for k, v in state["paths"].items()}
    for row in rows:
        row.ppl_cpp = llama_cpp.perplexity(paths[row.name], state["windows"], threads=max(args.threads))
        print(f"{row.name}: llama.cpp ppl {row.ppl_cpp:.3f} (hf {row.ppl_hf:.3f})", flush=True)
    loads = time_files(rows, paths, state["tokens"], args)
    text = report(rows, args, argv, loads, state["notes"], time.perf_counter() - start)
    print(text, flush=True)
    return text


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def report(rows: list[Row], args: argparse.Namespace, argv: Sequence[str] | None, loads: list[float],
           notes: list[str], seconds: float) -> str:
    headers = ["variant", "type", "llama.cpp arch", "file MiB", "block bits/weight", "ppl llama.cpp", "ppl hf",
               "ppl diff %"]
    for threads in args.threads:
        headers += [f"pp{args.prompt} tok/s {threads}t", f"tg{args.generate} tok/s {threads}t"]
    table = []
    for row in rows:
        diff = None if None in (row.ppl_cpp, row.ppl_hf) else f"{100 * (row.ppl_cpp / row.ppl_hf - 1):+.2f}"
        cells: list[Any] = [row.name, row.gguf_type, row.arch, row.file_mib, f"{row.block_bits:.3f}",
                            row.ppl_cpp, row.ppl_hf, diff]
        for threads in args.threads:
            pp, tg = (row.speeds or {}).get(threads, ([], []))
            cells += [_median(pp), _median(tg)]
        table.append(cells)
    command = "OMP_NUM_THREADS=1 nice python benchmarks/gguf_export.py " + shlex.join(argv or sys.argv[1:])
    load = (f"load average during the timings: median {statistics.median(loads):.1f}, range "
            f"{min(loads):.1f}-{max(loads):.1f}" if loads else "llama.cpp not run")
    return "\n\n".join([
        f"{datetime.date.today()}, `{command.strip()}`, {machine_description()}, {seconds:.0f} s",
        (f"Protocol: WikiText-2 test, {args.max_windows} windows x {args.eval_seqlen} tokens (the same ids in both "
         f"engines); calibration {args.nsamples} C4 windows x {args.seqlen}; speed: median of {args.repeats} "
         f"interleaved repeats; {load}. " + "; ".join(notes)),
        markdown_table(headers, table),
    ])

if __name__ == "__main__":
    main()
