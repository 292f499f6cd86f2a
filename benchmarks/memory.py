"""Peak memory of the pruning pipeline, per method, next to the sizes that explain it.

    python benchmarks/memory.py --nsamples 8 --seqlen 512

Each configuration runs in its own process (peak RSS only grows within a process). The child loads the
model, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``), prunes, and reports the peak RSS of
the pruning step, the RSS before it, and the peak CUDA memory when the model runs on a GPU. The parent
prints them next to the model size, one block, the calibration activations and the method's per-block
statistics (Hessians for SparseGPT), i.e. the terms of: residency + one block + activations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_description, markdown_table  # noqa: E402

RUNS = (("magnitude", "uniform"), ("wanda", "uniform"), ("sparsegpt", "uniform"), ("wanda", "owl"))
MIB = 1024 * 1024


def rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """VmHWM (bytes) since the last reset; ru_maxrss where /proc is not available."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def sizes(pruner, nsamples: int, seqlen: int, method: str) -> dict[str, int]:
    """Bytes of the model, of its largest block, of one set of block inputs and of one block's statistics."""
    from optimum_alpha.matrices import model_weights

    model = pruner.model
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    block_bytes = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in pruner.blocks)
    hidden = model.get_input_embeddings().weight.shape[1]
    dtype_size = model.get_input_embeddings().weight.element_size()
    inputs = [m.shape[1] for m in model_weights(model)[1][0].matrices]
    statistics = {"magnitude": 0, "wanda": 4 * sum(inputs), "sparsegpt": 4 * sum(n * n for n in inputs)}[method]
    return {"model": model_bytes, "block": block_bytes, "activations": nsamples * seqlen * hidden * dtype_size,
            "statistics": statistics}


def child(args: argparse.Namespace) -> None:
    import torch

    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    kwargs = {"device_map": args.device_map} if args.device_map else {}
    pruner = AlphaPruner.from_pretrained(args.model, run_analysis=False, show_progress=False, **kwargs)
    config = AlphaPruningConfig(sparsity=args.sparsity, method=args.method, allocation=args.allocation,
                                nsamples=args.nsamples, seqlen=args.seqlen)
    cuda = torch.cuda.is_available() and any(p.device.type == "cuda" for p in pruner.model.parameters())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = rss_now()
    exact = reset_peak_rss()
    _, report = pruner.prune(config, show_progress=False)
    result = {"method": args.method, "allocation": args.allocation, "rss_before": before, "peak_rss": peak_rss(),
              "peak_is_pruning_only": exact, "seconds": report.elapsed_s,
              "peak_cuda": torch.cuda.max_memory_allocated() if cuda else None,
              **sizes(pruner, args.nsamples, args.seqlen, args.method)}
    print("RESULT " + json.dumps(result), flush=True)


def run_child(args: argparse.Namespace, method: str, allocation: str) -> dict:
    command = [sys.executable, __file__, "--child", "--method", method, "--allocation", allocation,
               "--model", args.model, "--sparsity", str(args.sparsity), "--nsamples", str(args.nsamples),
               "--seqlen", str(args.seqlen)] + (["--device-map", args.device_map] if args.device_map else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{method}/{allocation} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--device-map", default=None, help="e.g. auto (GPU with CPU/disk offload)")
    p.add_argument("--runs", nargs="+", default=[f"{m}/{a}" for m, a in RUNS], help="method/allocation pairs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", default="wanda", help=argparse.SUPPRESS)
    p.add_argument("--allocation", default="uniform", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    if args.child:
        child(args)
        return ""
    rows = []
    for pair in args.runs:
        method, allocation = pair.split("/")
        r = run_child(args, method, allocation)
        cuda = f"{r['peak_cuda'] / MIB:.0f}" if r["peak_cuda"] is not None else None
        rows.append([f"{method} + {allocation}", f"{r['model'] / MIB:.0f}", f"{r['block'] / MIB:.1f}",
                     f"{r['activations'] / MIB:.1f}", f"{r['statistics'] / MIB:.1f}", f"{r['rss_before'] / MIB:.0f}",
                     f"{r['peak_rss'] / MIB:.0f}", f"{(r['peak_rss'] - r['rss_before']) / MIB:.0f}", cuda,
                     f"{r['seconds']:.0f}"])
        print(f"run: {json.dumps(r)}", flush=True)
    headers = ["run", "model MiB", "block MiB", "activations MiB", "block stats MiB", "RSS before MiB",
               "peak RSS MiB", "peak - before MiB", "peak CUDA MiB", "prune s"]
    table = (f"{args.model}, {args.sparsity:g} sparsity, calibration {args.nsamples} x {args.seqlen} tokens; "
             f"{machine_description()}\n\n" + markdown_table(headers, rows))
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
