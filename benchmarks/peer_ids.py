"""The calibration ids and evaluation windows that the peer comparison (benchmarks/peer_llmcompressor.py) and
our own runs share, written from the project's venv so that llm-compressor's venv needs no optimum_alpha.

    python benchmarks/peer_ids.py --output peer_ids.pt [--nsamples 32 --seqlen 512 --eval-seqlen 512 \
        --max-windows 20 --seed 0]

The file holds ``calibration`` (nsamples, seqlen) — exactly what ``AlphaPruningConfig(calibration_dataset="c4",
nsamples, seqlen, seed)`` calibrates on (:func:`optimum_alpha.data.sample_calibration`) —, ``evaluation``
(windows, eval_seqlen) — exactly what :func:`optimum_alpha.evaluate.perplexity` evaluates —, the protocol,
and the dense model's perplexity computed here with :func:`optimum_alpha.evaluate.perplexity` (the peer
script recomputes it in its venv: the two must agree).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def shared_ids(model: Any, tokenizer: Any, nsamples: int, seqlen: int, seed: int, eval_seqlen: int,
               max_windows: int | None, dataset: str = "wikitext2",
               calibration_dataset: str = "c4") -> dict[str, Any]:
    """Calibration ids as the pruner draws them, evaluation windows as perplexity() cuts them, the protocol."""
    from optimum_alpha.data import evaluation_tokens, sample_calibration
    from optimum_alpha.evaluate import evaluation_protocol

    sample = sample_calibration(tokenizer, calibration_dataset, nsamples, seqlen, seed)
    protocol = evaluation_protocol(model, tokenizer, dataset, eval_seqlen, max_windows)
    stream = evaluation_tokens(tokenizer, dataset)
    windows = stream[: protocol["windows"] * protocol["seqlen"]].reshape(protocol["windows"], protocol["seqlen"])
    return {
        "calibration": sample.ids.clone(),
        "evaluation": windows.clone(),
        "protocol": {"calibration": {**sample.describe(), "nsamples": nsamples, "seqlen": seqlen, "seed": seed},
                     "dataset": protocol["dataset"], "eval_seqlen": protocol["seqlen"],
                     "max_windows": protocol["windows"]},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=20)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense perplexity")
    args = parser.parse_args(argv)

    from optimum_alpha.evaluate import perplexity
    from optimum_alpha.models import load_model

    model, tokenizer = load_model(args.model)
    saved = shared_ids(model, tokenizer, args.nsamples, args.seqlen, args.seed, args.eval_seqlen,
                       args.max_windows)
    if not args.no_dense:
        start = time.perf_counter()
        saved["dense_perplexity"] = perplexity(model, tokenizer, seqlen=args.eval_seqlen,
                                               max_windows=args.max_windows, show_progress=False)
        print(f"dense perplexity {saved['dense_perplexity']:.4f} ({time.perf_counter() - start:.0f} s)")
    torch.save(saved, args.output)
    print(f"wrote {args.output}: calibration {tuple(saved['calibration'].shape)}, evaluation "
          f"{tuple(saved['evaluation'].shape)}, {saved['protocol']}")
    return saved


if __name__ == "__main__":
    main()
