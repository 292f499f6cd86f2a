"""The supported-architecture table of docs/architectures.md, measured on the families the tests use.

For each tiny random model of ``optimum_alpha/testing/architectures.py`` (4 blocks, hidden 64, float32): the largest
difference between the replayed block outputs and the model's own forward, the share of block weight
parameters that are pruned or kept dense on purpose (1.00 = nothing silently skipped), the achieved sparsity
of a 50 % magnitude + alpha run over the pruned matrices and over every block weight, and whether the
sparse checkpoint loads back bitwise.

    python benchmarks/architectures.py            # prints the markdown table
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from optimum_alpha.testing.architectures import FAMILIES, build

if __package__ in (None, ""):  # run as a script: make the sibling benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import markdown_table  # noqa: E402


def replay_error(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """Max |replayed block output − the block's output in a plain forward| over blocks and samples."""
    from optimum_alpha.calibration import block_output, capture_block_inputs, run_block
    from optimum_alpha.model_utils import find_blocks

    _, blocks = find_blocks(model)
    outputs: dict[int, list[torch.Tensor]] = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: outputs.setdefault(i, []).append(block_output(o)))
               for i, b in enumerate(blocks)]
    with torch.no_grad():
        for window in ids:
            model(window[None], use_cache=False)
    for handle in handles:
        handle.remove()
    inputs = capture_block_inputs(model, blocks, ids)
    worst = 0.0
    for index, block in enumerate(blocks):
        inputs.hidden_states = run_block(block, inputs, index)
        for sample, out in enumerate(inputs.hidden_states):
            worst = max(worst, float((out - outputs[index][sample]).abs().max()))
    return worst


def family_row(name: str) -> list:
    from optimum_alpha import AlphaPruner, AlphaPruningConfig, load_pruned
    from optimum_alpha.matrices import model_weights
    from optimum_alpha.model_utils import find_blocks

    model = build(name)
    ids = torch.randint(1, 320, (2, 32), generator=torch.Generator().manual_seed(0))
    error = replay_error(model, ids)
    _, blocks = model_weights(model)
    _, raw_blocks = find_blocks(model)
    all_weights = sum(p.numel() for b in raw_blocks for n, p in b.named_parameters()
                      if p.dim() >= 2 and not n.endswith("bias"))
    pruned = sum(m.numel for b in blocks for m in b.matrices)
    ignored = sum(sum(b.ignored.values()) for b in blocks)
    pruner = AlphaPruner.from_pretrained(model, show_progress=False)
    _, report = pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude"), show_progress=False)
    with tempfile.TemporaryDirectory() as folder:
        path = pruner.save_pretrained(Path(folder) / name, format="sparse")
        loaded = load_pruned(path).state_dict()
        bitwise = all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())
    return [name, FAMILIES[name][2], f"{error:.1e}", f"{(pruned + ignored) / all_weights:.2f}",
            f"{pruned / all_weights:.2f}", f"{report.total_sparsity:.4f}", f"{report.block_weight_sparsity:.4f}",
            "yes" if bitwise else "NO"]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args(argv)
    headers = ["family", "what it exercises", "replay max abs diff", "weights pruned or ignored on purpose",
               "weights pruned", "sparsity of pruned matrices", "sparsity of all block weights",
               "sparse save/load bitwise"]
    table = markdown_table(headers, [family_row(name) for name in args.families])
    print(table)
    return table


if __name__ == "__main__":
    main()
