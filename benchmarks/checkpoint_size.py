"""Dense vs sparse checkpoint size for SmolLM2-135M pruned with AlphaPruning.

Runs the real pipeline (ESD analysis once, then ``AlphaPruner.prune`` per sparsity level from the
same dense weights), saves each pruned model in both formats and in each requested dtype, checks
that the sparse folder loads back bit for bit through plain ``AutoModelForCausalLM.from_pretrained``
and prints a Markdown table. Usage (no GPU or network needed, a few minutes on 2 CPU cores)::

    HF_HUB_OFFLINE=1 python benchmarks/checkpoint_size.py --sparsities 0.5 0.7 0.9 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def folder_size(folder: Path) -> int:
    """Bytes of every file in the folder (weights, config, tokenizer, card, chart)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def weights_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def loads_back_exactly(model: torch.nn.Module, folder: Path) -> bool:
    """Load with plain transformers (``import optimum_alpha`` registered the plugin); compare bits."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(folder)
    want, got = model.state_dict(), loaded.state_dict()
    if set(want) != set(got):
        return False
    return all(got[k].dtype == v.dtype and torch.equal(got[k], v) for k, v in want.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--method", default="magnitude", help="magnitude needs no calibration data")
    parser.add_argument("--allocation", default="alpha")
    args = parser.parse_args()

    import optimum_alpha  # noqa: F401  (registers the alpha_sparse loader)
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    start = time.perf_counter()
    pruner = AlphaPruner.from_pretrained(args.model, show_progress=False)
    dense_state = {k: v.detach().clone() for k, v in pruner.model.state_dict().items()}
    print(f"loaded and analysed {args.model} in {time.perf_counter() - start:.0f} s")

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for sparsity in args.sparsities:
            pruner.model.load_state_dict(dense_state)
            config = AlphaPruningConfig(sparsity=sparsity, method=args.method, allocation=args.allocation)
            pruner.prune(config, show_progress=False)
            achieved = pruner.last_report.total_sparsity if pruner.last_report else float("nan")
            for dtype_name in args.dtypes:
                pruner.model.to(DTYPES[dtype_name])
                folders = {}
                for fmt in ("dense", "sparse"):
                    folders[fmt] = Path(scratch) / f"{sparsity}-{dtype_name}-{fmt}"
                    pruner.save_pretrained(folders[fmt], format=fmt, overwrite=True)
                exact = loads_back_exactly(pruner.model, folders["sparse"])
                dense_w, sparse_w = weights_size(folders["dense"]), weights_size(folders["sparse"])
                rows.append(
                    (sparsity, achieved, dtype_name, dense_w, sparse_w, folder_size(folders["dense"]),
                     folder_size(folders["sparse"]), exact)
                )
            pruner.model.to(torch.float32)

    print()
    print("| target sparsity | achieved (pruned layers) | dtype | dense weights MB | sparse weights MB "
          "| sparse / dense (weights) | sparse / dense (whole folder) | sparse loads bitwise |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | :---: |")
    for sparsity, achieved, dtype_name, dense_w, sparse_w, dense_f, sparse_f, exact in rows:
        print(f"| {sparsity:.0%} | {achieved:.4f} | {dtype_name} | {dense_w / 1e6:.1f} "
              f"| {sparse_w / 1e6:.1f} | {sparse_w / dense_w:.3f} | {sparse_f / dense_f:.3f} "
              f"| {'yes' if exact else 'NO'} |")
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
