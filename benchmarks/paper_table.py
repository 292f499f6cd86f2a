"""The paper's main comparison on SmolLM2-135M: {magnitude, Wanda, SparseGPT, ALPS} x {uniform, OWL, DLP, ATP
(β auto), alpha (default ε), alpha (ε auto), alpha+FARMS, alpha+FARMS (ε auto)} at 50-80 % sparsity, each without
and with block reconstruction, the dense model, and fix-finger reference vs strict.

One fixed protocol for every cell (defaults: WikiText-2 test, first 4 windows of 1024 tokens; calibration
8 C4 windows x 512 tokens with the library's default sampling, seed 0; 4 held-out windows for ε auto)::

    OMP_NUM_THREADS=1 python benchmarks/paper_table.py --log paper.jsonl
    OMP_NUM_THREADS=1 python benchmarks/paper_table.py --methods sparsegpt --log paper-sgpt.jsonl
    python benchmarks/paper_table.py --resume paper.jsonl paper-sgpt.jsonl --no-run   # the table from logs

Rows ``alpha`` use the library's default ε (0.3) and fix-finger; ``alpha-auto`` uses ``epsilon="auto"``
(one prune per grid value scored on held-out C4 windows, then the final prune); ``-farms`` rows use
``esd_sampling="farms"``; ``dlp`` is DLP with its α 0.15; ``atp-auto`` is ATP with β searched like ε
(``--atp-grid``). ``--reconstruct none block`` adds a column per sparsity with ``reconstruct="block"``. Every finished run is
printed (``run: ...``) and appended to ``--log``, so a stopped job keeps its numbers and ``--resume`` skips
them (same settings: the caller's promise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ModelFactory, Session, markdown_table, print_report  # noqa: E402

ALLOCATIONS = ("uniform", "owl", "dlp", "atp-auto", "alpha", "alpha-auto", "alpha-farms", "alpha-farms-auto")
BASELINES = ("uniform", "owl", "dlp", "atp-auto")  # the allocations the alpha rows are compared with
RECONSTRUCT_LABEL = {"none": "", "block": " +rec"}


class Cells:
    """Runs one cell at a time on a session, caching (and logging) each result by its key."""

    def __init__(self, args: argparse.Namespace, session_factory) -> None:
        self.args = args
        self.session_factory = session_factory
        self._session: Session | None = None
        self.cache: dict[str, dict[str, Any]] = {}
        for path in args.resume or []:
            for line in Path(path).read_text().splitlines():
                record = json.loads(line)
                self.cache[record["key"]] = record

    @property
    def session(self) -> Session:
        if self._session is None:  # loaded only when a cell is missing from the logs
            self._session = self.session_factory()
        return self._session

    def _record(self, record: dict[str, Any]) -> dict[str, Any]:
        self.cache[record["key"]] = record
        print("run: " + json.dumps(record), flush=True)
        if self.args.log:
            with open(self.args.log, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    def dense(self) -> dict[str, Any]:
        if "dense" not in self.cache:
            self.session.restore()
            ppl = self.session.perplexity(self.args.eval_seqlen, self.args.max_windows, self.args.eval_dataset)
            self._record({"key": "dense", "perplexity": ppl})
        return self.cache["dense"]

    def cell(self, method: str, allocation: str, sparsity: float, fix_finger: str | None = None,
             reconstruct: str = "none") -> dict:
        from optimum_alpha import AlphaPruningConfig

        fix_finger = fix_finger or AlphaPruningConfig.fix_finger
        key = f"{method}/{allocation}/{sparsity:g}/{fix_finger}" + ("" if reconstruct == "none" else f"/{reconstruct}")
        if key in self.cache:
            return self.cache[key]
        if self.args.no_run:
            return {"key": key, "perplexity": None}
        options = allocation_options(allocation, self.args)
        config = AlphaPruningConfig(sparsity=sparsity, method=method, fix_finger=fix_finger,
                                    nsamples=self.args.nsamples, seqlen=self.args.seqlen, seed=self.args.seed,
                                    reconstruct=reconstruct, **options)
        result = self.session.run(config, self.args.eval_seqlen, self.args.max_windows, self.args.eval_dataset)
        report = self.session.pruner.last_report
        record = {"key": key, "method": method, "allocation": allocation, "sparsity": sparsity,
                  "fix_finger": fix_finger, "reconstruct": reconstruct, "perplexity": result.perplexity,
                  "prune_s": result.prune_s, "reconstruction_s": report.reconstruction_s,
                  "eval_s": result.eval_s, "total_sparsity": result.total_sparsity,
                  "calibration": {k: v for k, v in report.calibration.items() if k != "notices"}}
        if report.epsilon_search:
            record["epsilon_search"] = report.epsilon_search
        return self._record(record)


def allocation_options(allocation: str, args: argparse.Namespace) -> dict[str, Any]:
    """The config fields of one table row."""
    name = allocation.replace("-auto", "").replace("-farms", "")
    options: dict[str, Any] = {"allocation": name}
    if allocation.endswith("-auto"):
        options["heldout"] = args.heldout
        if name == "atp":
            options["atp_beta_grid"] = tuple(args.atp_grid)
        else:
            options.update(epsilon="auto", epsilon_grid=tuple(args.epsilon_grid))
    elif name == "atp":
        options["atp_beta"] = args.atp_grid[0]
    if "-farms" in allocation:
        options["esd_sampling"] = "farms"
    return options


def _cell_text(perplexity: float | None) -> str:
    return "not run" if perplexity is None else f"{perplexity:.2f}"


def _search_note(record: dict) -> str:
    search = record.get("epsilon_search") or {}
    if "chosen" not in search:
        return ""
    symbol = "β" if search.get("parameter") == "atp_beta" else "ε"
    return f" ({symbol} {search['chosen']:g})"


def verdicts(cells: Cells, args: argparse.Namespace) -> list[str]:
    """One line for every cell where an alpha row does not beat a baseline, and whether FARMS helps."""
    lines = []
    alphas = [a for a in args.allocations if a.startswith("alpha")]
    baselines = [a for a in args.allocations if a in BASELINES]
    for method in args.methods:
        for sparsity in args.sparsities:
            for reconstruct in args.reconstruct:
                where = f"{method} {sparsity:.0%}{RECONSTRUCT_LABEL[reconstruct]}"

                def ppl(allocation: str) -> float | None:
                    return cells.cell(method, allocation, sparsity, reconstruct=reconstruct)["perplexity"]

                for alpha in alphas:
                    mine = ppl(alpha)
                    for other in baselines:
                        theirs = ppl(other)
                        if mine is not None and theirs is not None and not mine < theirs:
                            lines.append(f"- {where}: {alpha} ({mine:.2f}) does NOT beat {other} ({theirs:.2f})")
                for plain in ("alpha", "alpha-auto"):
                    farms = plain.replace("alpha", "alpha-farms")
                    if plain in alphas and farms in alphas:
                        a, f = ppl(plain), ppl(farms)
                        if a is not None and f is not None:
                            lines.append(f"- {where}: {farms} {f:.2f} vs {plain} {a:.2f}: FARMS "
                                         f"{'better' if f < a else 'NOT better'}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS), choices=ALLOCATIONS)
    p.add_argument("--auto-methods", nargs="+", default=None,
                   help="methods that get the alpha-auto column (default: all of --methods)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    p.add_argument("--fix-finger-cells", nargs="*", default=["wanda:0.7"],
                   help="METHOD:SPARSITY cells run with both fix-finger modes")
    p.add_argument("--epsilon-grid", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--atp-grid", type=float, nargs="+", default=[0.0025, 0.005, 0.0075, 0.01, 0.0125],
                   help="ATP's β values tried by atp-auto (an 'atp' row uses the first)")
    p.add_argument("--reconstruct", nargs="+", default=["none"], choices=["none", "block"],
                   help="one column per sparsity and value (block: reconstruct='block')")
    p.add_argument("--heldout", type=int, default=4, help="held-out C4 windows scoring epsilon=auto")
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-windows", type=int, default=4, help="WikiText-2 test windows")
    p.add_argument("--eval-seqlen", type=int, default=1024)
    p.add_argument("--eval-dataset", default="wikitext2", help="wikitext2 (test split) or a local text file")
    p.add_argument("--log", default=None)
    p.add_argument("--resume", nargs="+", default=None)
    p.add_argument("--no-run", action="store_true",
                   help="only print the cells found in --resume logs; the others show 'not run'")
    p.add_argument("--progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None, model_factory: ModelFactory | None = None) -> str:
    args = build_parser().parse_args(argv)
    auto_methods = set(args.auto_methods if args.auto_methods is not None else args.methods)
    cells = Cells(args, lambda: Session(args.model, factory=model_factory, show_progress=args.progress))
    start = time.perf_counter()
    columns = [(s, r) for s in args.sparsities for r in args.reconstruct]
    headers = ["method", "allocation"] + [f"{s:.0%}{RECONSTRUCT_LABEL[r]}" for s, r in columns]
    dense = cells.dense()["perplexity"]
    rows: list[list[Any]] = [["dense", "-"] + [f"{dense:.2f}"] * len(columns)]
    for method in args.methods:
        for allocation in args.allocations:
            if allocation.startswith("alpha") and allocation.endswith("-auto") and method not in auto_methods:
                continue
            row: list[Any] = [method, allocation]
            for sparsity, reconstruct in columns:
                record = cells.cell(method, allocation, sparsity, reconstruct=reconstruct)
                row.append(_cell_text(record["perplexity"]) + _search_note(record))
            rows.append(row)
    args.allocations = [a for a in args.allocations
                        if not (a.startswith("alpha") and a.endswith("-auto")) or auto_methods >= set(args.methods)]
    ff_rows = []
    for spec in args.fix_finger_cells:
        method, sparsity = spec.split(":")
        values = [cells.cell(method, "alpha", float(sparsity), mode)["perplexity"]
                  for mode in ("reference", "strict")]
        ff_rows.append([method, f"{float(sparsity):.0%}"] + [_cell_text(v) for v in values])
    sample = next((r["calibration"] for r in cells.cache.values() if "calibration" in r), {})
    settings = (f"WikiText-2 test, first {args.max_windows} windows of {args.eval_seqlen} tokens; calibration "
                f"{args.nsamples} x {args.seqlen} tokens, {sample.get('sampling', '?')} sampling from "
                f"{sample.get('source', '?')}, seed {args.seed}; ε auto grid {args.epsilon_grid}, ATP β grid "
                f"{args.atp_grid}, {args.heldout} held-out windows")
    body = markdown_table(headers, rows)
    if ff_rows:
        body += "\n\nfix-finger (alpha, default ε):\n\n" + markdown_table(
            ["method", "sparsity", "reference", "strict"], ff_rows)
    notes = verdicts(cells, args)
    body += "\n\n" + ("\n".join(notes) if notes else "alpha beats every baseline in every cell")
    return print_report("paper table", settings, f"time {time.perf_counter() - start:.0f} s", body)


if __name__ == "__main__":
    main()
