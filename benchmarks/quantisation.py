"""Prune, then quantise SmolLM2-135M: perplexity, surviving zeros, bits per weight and folder size per row.

Every row starts from the same dense weights and uses the same calibration windows (same source, count,
length and seed) and the same WikiText-2 evaluation windows. Quantised rows are saved as compressed-tensors
folders (float rows as dense safetensors) and their weight files measured. Usage (2 CPU cores, no network)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/quantisation.py --nsamples 16 --seqlen 512 \\
        --eval-seqlen 512 --max-windows 20 --group-size 64 --json outputs/quantisation.json

``--rows`` runs a subset (names below); results are appended to ``--json`` row by row, so an interrupted run
keeps what it measured. Peer rows (llm-compressor) come from a separate script and venv.
"""

from __future__ import annotations

import argparse
import copy as copy_module
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ModelFactory, Session, markdown_table, print_report  # noqa: E402

# name -> (description, AlphaPruningConfig fields); None means the dense model itself.
ROWS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "dense": ("dense", None),
    "w4-rtn": ("W4 RTN", dict(sparsity=0.0, bits=4, weight_quant_method="rtn")),
    "w4-gptq": ("W4 GPTQ", dict(sparsity=0.0, bits=4)),
    "w4-gptq-input-order": ("W4 GPTQ, input order, dampening 0.01 (before 2026-12-03)",
                            dict(sparsity=0.0, bits=4, act_order=False, quant_damp=0.01)),
    "alpha-4.5": ("alpha bits, avg 4.5 over {4, 8}, GPTQ", dict(sparsity=0.0, bits=4.5, bit_allocation="alpha")),
    "uniform-4.5": ("depth-spread bits, avg 4.5 over {4, 8}, GPTQ",
                    dict(sparsity=0.0, bits=4.5, bit_allocation="uniform")),
    "wanda-50": ("Wanda + alpha 50 % (float)", dict(sparsity=0.5, method="wanda")),
    "wanda-50-w4": ("Wanda + alpha 50 % -> W4 GPTQ (mask kept)", dict(sparsity=0.5, method="wanda", bits=4)),
    "sparsegpt-50": ("SparseGPT + alpha 50 % (float)", dict(sparsity=0.5, method="sparsegpt")),
    "sparsegpt-50-w4": ("SparseGPT + alpha 50 % -> W4 GPTQ (mask kept)", dict(sparsity=0.5, method="sparsegpt", bits=4)),
    "sparsegpt-50-w4-joint": ("SparseGPT + alpha 50 % joint W4 (one sweep)",
                              dict(sparsity=0.5, method="sparsegpt", bits=4, joint_quantisation=True)),
}


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


class MaskRecorder:
    """Records, per matrix, where the pruner put its zeros before quantisation (``QuantizedMatrix.pruned``)."""

    def __init__(self) -> None:
        self.masks: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "MaskRecorder":
        from optimum_alpha.quantization import layer

        self._original = original = layer.QuantisingPruner.prune
        recorder = self

        def prune(pruner, weight, sparsity, nm=None):
            result = original(pruner, weight, sparsity, nm)
            recorder.masks[pruner.name] = pruner.quantized.pruned.clone()
            return result

        layer.QuantisingPruner.prune = prune
        return self

    def __exit__(self, *exc: Any) -> None:
        from optimum_alpha.quantization import layer

        layer.QuantisingPruner.prune = self._original

    def surviving_share(self, pruner: Any) -> float | None:
        """Share of the pruned weights still exactly 0 in the final model (None when nothing was pruned)."""
        kept = total = 0
        for block in pruner.block_weights():
            for matrix in block.matrices:
                mask = self.masks.get(matrix.name)
                if mask is not None and mask.any():
                    kept += int((matrix.read()[mask] == 0).sum())
                    total += int(mask.sum())
        return kept / total if total else None


def run_row(session: Session, name: str, fields: dict[str, Any] | None, args: argparse.Namespace,
            folder: Path) -> dict[str, Any]:
    from optimum_alpha import AlphaPruningConfig

    session.restore()
    result: dict[str, Any] = {"row": name, "description": ROWS[name][0]}
    start = time.perf_counter()
    report = None
    recorder = MaskRecorder()
    if fields is not None:
        config = AlphaPruningConfig(nsamples=args.nsamples, seqlen=args.seqlen, group_size=args.group_size,
                                    seed=args.seed, **fields)
        with recorder:
            _, report = session.pruner.prune(config, show_progress=session.show_progress)
    result["prune_s"] = time.perf_counter() - start
    start = time.perf_counter()
    result["perplexity"] = session.perplexity(args.eval_seqlen, args.max_windows)
    result["eval_s"] = time.perf_counter() - start
    quantised = bool(report is not None and report.quantization)
    result["sparsity"] = report.total_sparsity if report else 0.0
    result["zeros_kept"] = recorder.surviving_share(session.pruner) if quantised else None
    if quantised:
        q = report.quantization
        result.update(average_bits=q["average_bits"], bits_per_weight=q["bits_per_weight_with_scales"],
                      widths=sorted(set(q["bits"].values())))
    fmt = "compressed-tensors" if quantised else "dense"
    saved = session.pruner.save_pretrained(folder / name, format=fmt, overwrite=True)
    result["weights_bytes"] = weights_bytes(saved)
    return result


def dense_folder_bytes(model: torch.nn.Module, folder: Path) -> tuple[int, int]:
    """Weight bytes of the dense folder in float32 and in bfloat16, each saved from a copy of the model: casting
    the measured model and back would round its float buffers (rotary ``inv_freq``) and shift every row."""
    from optimum_alpha.checkpoint import save_pruned

    sizes = []
    for dtype in (torch.float32, torch.bfloat16):
        copy = copy_module.deepcopy(model).to(dtype)
        sizes.append(weights_bytes(save_pruned(copy, folder / f"dense-{dtype}".replace("torch.", ""),
                                               format="dense")))
        del copy
    return sizes[0], sizes[1]


def embedding_bytes(model: torch.nn.Module, element_size: int) -> int:
    """Bytes of the input embeddings (SmolLM2 ties lm_head to them, so they are stored once)."""
    return model.get_input_embeddings().weight.numel() * element_size


def table(results: list[dict[str, Any]], dense_fp32: int, dense_bf16: int) -> str:
    rows = []
    for r in results:
        rows.append([
            r["description"], f"{r['perplexity']:.2f}", f"{r['sparsity']:.3f}",
            "-" if r.get("zeros_kept") is None else f"{100 * r['zeros_kept']:.2f} %",
            "-" if "average_bits" not in r else f"{r['average_bits']:.3f}",
            "-" if "bits_per_weight" not in r else f"{r['bits_per_weight']:.3f}",
            f"{r['weights_bytes'] / 2**20:.1f}", f"{r['weights_bytes'] / dense_fp32:.3f}",
            f"{r['weights_bytes'] / dense_bf16:.3f}", f"{r['prune_s']:.0f}",
        ])
    return markdown_table(["row", "perplexity", "zeros (block weights)", "pruned zeros kept", "avg bits",
                           "bits/weight incl. scales", "weights MiB", "vs dense fp32", "vs dense bf16",
                           "prune+quantise s"], rows)


def main(argv: list[str] | None = None, factory: ModelFactory | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=20)
    parser.add_argument("--group-size", type=int, default=64, help="SmolLM2's 576 inputs take 64, not 128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the model's dtype, which is the dtype of the stored scales")
    parser.add_argument("--json", type=Path, default=None, help="append each row's result to this file")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    session = Session(args.model, factory=factory, dtype=dtype)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense_fp32, dense_bf16 = dense_folder_bytes(session.model, folder)
        for name in args.rows:
            result = run_row(session, name, ROWS[name][1], args, folder)
            results.append(result)
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                with args.json.open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
            print(json.dumps(result), flush=True)
    embeddings = (f"embeddings: {embedding_bytes(session.model, 4) / 2**20:.1f} MiB in float32 "
                  f"({embedding_bytes(session.model, 2) / 2**20:.1f} MiB in bfloat16), kept float in every folder; "
                  f"dense folders: {dense_fp32 / 2**20:.1f} MiB float32, {dense_bf16 / 2**20:.1f} MiB bfloat16")
    settings = (f"model {args.model}; calibration {args.nsamples} C4 document windows x {args.seqlen} tokens "
                f"(seed {args.seed}, the same for every row); evaluation: first {args.max_windows} WikiText-2 "
                f"test windows of {args.eval_seqlen} tokens; symmetric int, groups of {args.group_size}, "
                f"{args.dtype} model and scales; allocation alpha (ε 0.3) for the pruned rows")
    return print_report("Prune, then quantise", settings, embeddings, table(results, dense_fp32, dense_bf16))


if __name__ == "__main__":
    main()
