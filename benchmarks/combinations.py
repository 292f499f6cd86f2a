"""WikiText-2 perplexity of every within-layer method x allocation at one sparsity (the paper's 3 x 3 grid).

    python benchmarks/combinations.py --sparsity 0.7 --nsamples 32 --seqlen 512 --max-windows 20 --eval-seqlen 512

The model is loaded and analysed once; each run starts from the dense weights. Every finished run is
printed at once (``run: ...``) and appended to ``--log`` as JSON, so a stopped job still leaves its numbers;
the markdown table (rows: method, columns: allocation) comes last. ``--nm 2:4`` or ``--nm mixed:8`` runs the
grid with an N:M pattern instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ModelFactory, Session, machine_description, markdown_table  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS = ("uniform", "owl", "alpha")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--allocations", nargs="+", choices=ALLOCATIONS, default=list(ALLOCATIONS))
    p.add_argument("--nm", default=None, help="an N:M pattern ('2:4') or 'mixed:M' (per-block N)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (C4)")
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    p.add_argument("--max-windows", type=int, default=20, help="WikiText-2 test windows evaluated")
    p.add_argument("--eval-seqlen", type=int, default=512, help="tokens per evaluation window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", default=None, help="append one JSON line per finished run to this file")
    return p


def main(argv: Sequence[str] | None = None, model_factory: ModelFactory | None = None) -> str:
    from optimum_alpha import AlphaPruningConfig

    args = build_parser().parse_args(argv)
    session = Session(args.model, factory=model_factory)
    print(f"machine: {machine_description()}", flush=True)
    print(f"setup (load + ESD analysis): {session.setup_s:.1f} s", flush=True)
    dense = session.perplexity(args.eval_seqlen, args.max_windows)
    print(f"dense: perplexity {dense:.2f}", flush=True)
    results: dict[tuple[str, str], float] = {}
    for method in args.methods:
        for allocation in args.allocations:
            config = AlphaPruningConfig(sparsity=args.sparsity, method=method, allocation=allocation, nm=args.nm,
                                        nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
            run = session.run(config, args.eval_seqlen, args.max_windows)
            results[(method, allocation)] = run.perplexity
            record = {"method": method, "allocation": allocation, "sparsity": args.sparsity, "nm": args.nm,
                      "perplexity": run.perplexity, "achieved": run.total_sparsity, "prune_s": run.prune_s,
                      "eval_s": run.eval_s, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            print(f"run: {json.dumps(record)}", flush=True)
            if args.log:
                with open(args.log, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
    rows = [[method] + [results.get((method, a)) for a in args.allocations] for method in args.methods]
    pattern = f", N:M {args.nm}" if args.nm else ""
    table = (f"Perplexity at {args.sparsity * 100:g} % sparsity{pattern} (dense {dense:.2f}); WikiText-2 test, "
             f"{args.max_windows} windows x {args.eval_seqlen} tokens; calibration {args.nsamples} x {args.seqlen} "
             f"C4 tokens, seed {args.seed}\n\n" + markdown_table(["method"] + list(args.allocations), rows))
    print(table, flush=True)
    return table


if __name__ == "__main__":
    main()
