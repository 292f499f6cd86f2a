"""Wall time of a data-parallel prune (issue 23): the same prune with 1 and N ranks under torchrun.

    python benchmarks/distributed.py --ranks 1 2 --methods wanda sparsegpt alps --nsamples 8 --seqlen 512

For each rank count, ``torch.distributed.run --standalone --nproc-per-node N`` starts this script as a worker
(``--worker``): every rank loads the model (one thread each), times the ESD analysis, then each method's
``AlphaPruner.prune`` from the dense weights (uniform allocation, so the ESD is timed once, on its own). Rank 0
records the wall and CPU times (the table shows the slowest rank) and every mask; the table gives the speed-up over one rank and
whether the masks equal the one-rank masks (Wanda/magnitude: identical; SparseGPT/ALPS: equal except where
float rounding of the summed Hessians reorders near-ties; the share of differing positions is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import machine_description, markdown_table  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch

    from optimum_alpha import AlphaPruner, AlphaPruningConfig
    from optimum_alpha.distributed import current, shutdown

    torch.set_num_threads(1)
    parallel = current()
    times: dict[str, float] = {}

    def timed(stage: str, function) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        times[stage] = time.perf_counter() - wall
        times[f"{stage}_cpu"] = time.process_time() - cpu

    pruner = AlphaPruner.from_pretrained(args.model, show_progress=False)
    dense = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    timed("esd", lambda: pruner.analyze(show_progress=False))
    masks = {}
    for method in args.methods:
        pruner.model.load_state_dict(dense)
        config = AlphaPruningConfig(sparsity=args.sparsity, method=method, allocation="uniform",
                                    nsamples=args.nsamples, seqlen=args.seqlen, alps_max_iter=args.alps_max_iter)
        timed(method, lambda: pruner.prune(config, show_progress=False))
        masks[method] = {name: (p == 0).cpu() for name, p in pruner.model.named_parameters()
                         if p.dim() == 2 and "layers" in name}
    out = Path(args.out)
    (out / f"times{parallel.world_size}_rank{parallel.rank}.json").write_text(json.dumps(times))
    if parallel.is_main:
        torch.save(masks, out / f"masks{parallel.world_size}.pt")
    shutdown()


def launch(ranks: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               str(Path(__file__).resolve()), "--worker", "--out", str(out), "--model", args.model,
               "--methods", *args.methods, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
               "--sparsity", str(args.sparsity), "--alps-max-iter", str(args.alps_max_iter)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    per_rank = [json.loads((out / f"times{ranks}_rank{r}.json").read_text()) for r in range(ranks)]
    times = {stage: max(t[stage] for t in per_rank) for stage in per_rank[0]}  # the slowest rank
    times["process"] = time.perf_counter() - start
    return times


def mask_difference(a: dict, b: dict) -> float:
    differ = sum(int((a[k] != b[k]).sum()) for k in a)
    return differ / sum(a[k].numel() for k in a)


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt", "alps"])
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--alps-max-iter", type=int, default=300)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return ""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        times = {ranks: launch(ranks, args, out) for ranks in args.ranks}
        masks = {ranks: torch.load(out / f"masks{ranks}.pt") for ranks in args.ranks}
    base = args.ranks[0]
    rows = []
    for stage in ["esd", *args.methods]:
        row = [stage] + [f"{times[r][stage]:.1f}" for r in args.ranks]
        row += [f"{times[base][stage] / times[r][stage]:.2f}x" for r in args.ranks[1:]]
        row += [f"{times[r][stage + '_cpu']:.1f}" for r in args.ranks]
        if stage != "esd":
            row += [f"{mask_difference(masks[base][stage], masks[r][stage]):.2e}" for r in args.ranks[1:]]
        else:
            row += ["" for _ in args.ranks[1:]]
        rows.append(row)
    headers = ["stage"] + [f"{r} rank(s) wall s" for r in args.ranks] + [f"speed-up {r}" for r in args.ranks[1:]] \
        + [f"{r} rank(s) CPU s (slowest rank)" for r in args.ranks] \
        + [f"mask positions differing {r} vs {base}" for r in args.ranks[1:]]
    text = (f"machine: {machine_description()}\nload average at the end: {os.getloadavg()}\n"
            f"{args.model}, calibration {args.nsamples} x {args.seqlen}, sparsity {args.sparsity}, uniform, "
            f"ALPS max_iter {args.alps_max_iter}, one thread per rank\n\n" + markdown_table(headers, rows))
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
