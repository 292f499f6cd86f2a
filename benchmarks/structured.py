"""Width pruning on SmolLM2-135M: size, CPU latency and WikiText-2 perplexity, dense vs width-pruned.

    OMP_NUM_THREADS=1 python benchmarks/structured.py                      # the docs/structured.md table

Quality: uniform vs alpha block shares, each with the least-squares refit and without (slice only), at
``--quality-fraction`` of the block weights removed. Size and speed: the dense model and models width-pruned
(uniform shares, refit) at each of ``--fractions`` plus the alpha model at the quality fraction; every
pruned model is saved, loaded back with plain ``AutoModelForCausalLM.from_pretrained`` and checked to give
the in-memory logits, and the *loaded* models are timed. Timings are interleaved (every repeat runs every
model once, in turn) and the median is reported, because the CPU may be shared.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.common import ModelFactory, machine_description, markdown_table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3, 0.5],
                        help="fractions of block weights removed for the size/speed table")
    parser.add_argument("--quality-fraction", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows (C4)")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    parser.add_argument("--speed-nsamples", type=int, default=4,
                        help="calibration windows of the speed-only models (shapes do not depend on it)")
    parser.add_argument("--eval-seqlen", type=int, default=1024)
    parser.add_argument("--max-windows", type=int, default=8, help="WikiText-2 test windows")
    parser.add_argument("--prefill", type=int, default=512, help="prompt length of the prefill timing")
    parser.add_argument("--decode-tokens", type=int, default=64, help="new tokens of the decode timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--head-sparsity", type=float, default=None,
                        help="fraction of query heads removed per group in every block (default: the block's share)")
    parser.add_argument("--skip-speed", action="store_true", help="only the perplexity table")
    parser.add_argument("--skip-quality", action="store_true",
                        help="only the size/speed table (every model pruned with --speed-nsamples)")
    return parser.parse_args(argv)


def block_params(model: torch.nn.Module) -> int:
    from optimum_alpha.model_utils import find_blocks

    return sum(module.weight.numel() for block in find_blocks(model)[1] for module in block.modules()
               if isinstance(module, torch.nn.Linear))


class Dense:
    """The loaded dense model with its ESD analysis; hands out pruned copies."""

    def __init__(self, args: argparse.Namespace, factory: ModelFactory | None) -> None:
        from optimum_alpha import AlphaPruner

        if factory is None:
            self.pruner = AlphaPruner.from_pretrained(args.model, show_progress=False)
        else:
            model, tokenizer = factory()
            self.pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False)
        self.args = args

    def pruned(self, fraction: float, allocation: str, refit: bool, nsamples: int):
        from optimum_alpha import AlphaPruner, AlphaPruningConfig

        pruner = AlphaPruner(copy.deepcopy(self.pruner.model), self.pruner.tokenizer, self.pruner.source)
        pruner.esd_report = self.pruner.esd_report  # of the dense weights, as the allocation needs
        config = AlphaPruningConfig(structure="width", sparsity=fraction, allocation=allocation,
                                    structured_refit=refit, nsamples=nsamples, seqlen=self.args.seqlen,
                                    head_sparsity=self.args.head_sparsity)
        start = time.perf_counter()
        pruner.prune(config, show_progress=False)
        return pruner, time.perf_counter() - start


def perplexity(model: torch.nn.Module, tokenizer: Any, args: argparse.Namespace) -> float:
    from optimum_alpha.evaluate import perplexity as ppl

    return ppl(model, tokenizer, dataset="wikitext2", seqlen=args.eval_seqlen, max_windows=args.max_windows,
               show_progress=False)


def quality_table(dense: Dense, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Perplexity of uniform/alpha shares with and without the refit; returns the refitted pruners too."""
    rows = [["dense", "-", "-", perplexity(dense.pruner.model, dense.pruner.tokenizer, args), "-"]]
    kept: dict[str, Any] = {}
    for allocation in ("uniform", "alpha"):
        for refit in (True, False):
            pruner, seconds = dense.pruned(args.quality_fraction, allocation, refit, args.nsamples)
            removed = 1 - block_params(pruner.model) / block_params(dense.pruner.model)
            rows.append([allocation, "refit" if refit else "slice only", f"{removed:.3f}",
                         perplexity(pruner.model, pruner.tokenizer, args), f"{seconds:.0f}"])
            print(rows[-1], flush=True)
            if refit:
                kept[allocation] = pruner
    headers = ["block shares", "consumer", "block weights removed", "WikiText-2 ppl", "prune s"]
    return markdown_table(headers, rows), kept


def save_and_load(pruner: Any, folder: Path) -> tuple[torch.nn.Module, int]:
    """Save (dense format), load with plain from_pretrained, check the logits; returns (model, bytes)."""
    from transformers import AutoModelForCausalLM

    from optimum_alpha.checkpoint import save_pruned

    save_pruned(pruner.model, folder, tokenizer=pruner.tokenizer, format="dense")
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.arange(1, 33)[None, :]
    with torch.no_grad():
        if not torch.allclose(loaded(ids).logits, pruner.model(ids).logits, atol=1e-5):
            raise RuntimeError(f"{folder}: the loaded model's logits differ from the pruned model's")
    return loaded, sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def time_models(models: dict[str, torch.nn.Module], tokenizer: Any, args: argparse.Namespace
                ) -> dict[str, tuple[list[float], list[float]]]:
    """Prefill seconds and decode tokens/s of every round per model, interleaved over ``args.repeats`` rounds."""
    from optimum_alpha.data import load_texts

    text = " ".join(load_texts("wikitext2")[:200])
    ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.prefill]
    prompt = ids[:, :16]
    prefill: dict[str, list[float]] = {name: [] for name in models}
    decode: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            with torch.no_grad():
                start = time.perf_counter()
                model(ids)
                prefill[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                out = model.generate(prompt, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens,
                                     do_sample=False, pad_token_id=tokenizer.eos_token_id)
                seconds = time.perf_counter() - start
            decode[name].append((out.shape[1] - prompt.shape[1]) / seconds)
    return {name: (prefill[name], decode[name]) for name in models}


def speed_table(dense: Dense, refitted: dict[str, Any], args: argparse.Namespace) -> str:
    pruners: dict[str, Any] = {"dense": dense.pruner}
    for fraction in args.fractions:
        if fraction == args.quality_fraction and "uniform" in refitted:
            pruners[f"uniform {fraction:.0%}"] = refitted["uniform"]
        else:
            pruners[f"uniform {fraction:.0%}"] = dense.pruned(fraction, "uniform", True, args.speed_nsamples)[0]
    pruners[f"alpha {args.quality_fraction:.0%}"] = refitted["alpha"] if "alpha" in refitted else \
        dense.pruned(args.quality_fraction, "alpha", True, args.speed_nsamples)[0]
    models, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, pruner) in enumerate(pruners.items()):
            models[name], sizes[name] = save_and_load(pruner, Path(tmp) / f"m{i}")
        timings = time_models(models, dense.pruner.tokenizer, args)
    base_params = sum(p.numel() for p in models["dense"].parameters())
    median, best = statistics.median, {"prefill": min, "decode": max}
    base = timings["dense"]
    rows = []
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        prefill, decode = timings[name]
        rows.append([name, f"{params / 1e6:.1f}M ({params / base_params:.2f}x)",
                     f"{1 - block_params(model) / block_params(models['dense']):.3f}",
                     f"{sizes[name] / 2**20:.0f} MiB ({sizes[name] / sizes['dense']:.2f}x)",
                     f"{median(prefill) * 1000:.0f} ms ({median(base[0]) / median(prefill):.2f}x)",
                     f"{best['prefill'](prefill) * 1000:.0f} ms ({best['prefill'](base[0]) / best['prefill'](prefill):.2f}x)",
                     f"{median(decode):.1f} ({median(decode) / median(base[1]):.2f}x)",
                     f"{best['decode'](decode):.1f} ({best['decode'](decode) / best['decode'](base[1]):.2f}x)"])
    headers = ["model", "parameters", "block weights removed", "safetensors",
               f"prefill {args.prefill} tok, median (speed-up)", "prefill, best",
               f"decode tok/s, {args.decode_tokens} new, median (speed-up)", "decode, best"]
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None, model_factory: ModelFactory | None = None) -> str:
    args = parse_args(argv)
    start = time.perf_counter()
    dense = Dense(args, model_factory)
    quality, refitted = ("(not run: --skip-quality)", {}) if args.skip_quality else quality_table(dense, args)
    print(quality, flush=True)
    speed = "(not run: --skip-speed)" if args.skip_speed else speed_table(dense, refitted, args)
    command = "OMP_NUM_THREADS=1 python benchmarks/structured.py " + shlex.join(argv or sys.argv[1:])
    text = "\n\n".join([
        f"{datetime.date.today()}, `{command.strip()}`, {machine_description()}, {time.perf_counter() - start:.0f} s",
        (f"Calibration: {args.nsamples} C4 windows x {args.seqlen} tokens; WikiText-2 test, {args.max_windows} "
         f"windows x {args.eval_seqlen} tokens; {args.quality_fraction:.0%} of block weights removed; "
         f"head_sparsity {args.head_sparsity if args.head_sparsity is not None else 'the block share'}."),
        quality,
        (f"Speed: batch 1, {torch.get_num_threads()} thread(s), median and best of {args.repeats} interleaved "
         "repeats (the best is the least disturbed by other processes on a shared CPU); "
         "models loaded back from their saved folders with AutoModelForCausalLM.from_pretrained."),
        speed,
    ])
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
