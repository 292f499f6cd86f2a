"""The runs ``tests/test_distributed.py`` compares between one process and a data-parallel group.

``python -m optimum_alpha.testing.distributed_runs OUT TOKENIZER`` runs every scenario with whatever
process group the environment describes (torchrun's variables, or none) and writes one
``OUT/rank<r>.pt`` per rank; the test calls :func:`run_all` in its own process for the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .architectures import build

CALIBRATION = dict(nsamples=4, seqlen=32)
FAST_ALPS = dict(alps_max_iter=12, alps_pcg_iters=3)
FAILING_RANK = 1
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "wanda_alpha": ("llama", dict(method="wanda", allocation="alpha")),
    "magnitude_alpha": ("llama", dict(method="magnitude", allocation="alpha")),
    "sparsegpt": ("llama", dict(method="sparsegpt", allocation="uniform")),
    "alps": ("llama", dict(method="alps", allocation="uniform", **FAST_ALPS)),
    "wanda_owl": ("llama", dict(method="wanda", allocation="owl")),
    "wanda_moe": ("mixtral", dict(method="wanda", allocation="uniform")),
    "width": ("llama", dict(method="wanda", allocation="uniform", structure="width", sparsity=0.3)),
}


def _prune(family: str, options: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    from .. import AlphaPruner, AlphaPruningConfig

    pruner = AlphaPruner(build(family), tokenizer=tokenizer, show_progress=False)
    config = AlphaPruningConfig(**{"sparsity": 0.5, **CALIBRATION, **options})
    model, report = pruner.prune(config, show_progress=False)
    result = {"weights": {k: v.clone() for k, v in model.state_dict().items()},
              "targets": dict(report.layer_targets), "uncalibrated": list(report.uncalibrated)}
    if pruner.state.esd_report is not None:
        result["alphas"] = {m.name: m.metrics["alpha_hill"] for m in pruner.state.esd_report.matrices}
    return result


def _save(tokenizer: Any, folder: Path) -> dict[str, Any]:
    """A save under the group: how often this rank's process wrote a checkpoint folder."""
    from .. import AlphaPruner, AlphaPruningConfig
    from ..checkpoint import save as save_module

    calls = []
    original = save_module._write_folder

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    save_module._write_folder = counting
    try:
        pruner = AlphaPruner(build("llama"), tokenizer=tokenizer, show_progress=False)
        pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude", allocation="uniform"),
                     show_progress=False)
        path = pruner.save_pretrained(folder)
    finally:
        save_module._write_folder = original
    return {"writer_calls": len(calls), "path": str(path)}


def _failure(tokenizer: Any) -> str:
    """Rank FAILING_RANK raises inside its pruner; returns the error every rank ends with."""
    from ..distributed import current
    from ..pruning.wanda import WandaPruner

    original: Callable = WandaPruner.prune

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a pruner failed on purpose")

    if current().rank == FAILING_RANK:
        WandaPruner.prune = broken  # type: ignore[method-assign]
    try:
        _prune("llama", dict(method="wanda", allocation="uniform"), tokenizer)
    except Exception as exc:  # noqa: BLE001 - the message is the result
        return f"{type(exc).__name__}: {exc}"
    finally:
        WandaPruner.prune = original  # type: ignore[method-assign]
    return "no error"


def run_all(tokenizer: Any, out: Path, with_failure: bool = True) -> dict[str, Any]:
    results: dict[str, Any] = {name: _prune(family, options, tokenizer)
                               for name, (family, options) in SCENARIOS.items()}
    results["save"] = _save(tokenizer, out / "checkpoint")
    if with_failure:
        results["failure"] = _failure(tokenizer)
    return results


def main(argv: list[str]) -> None:
    from transformers import AutoTokenizer

    from ..distributed import current, shutdown

    out, tokenizer = Path(argv[0]), AutoTokenizer.from_pretrained(argv[1])
    torch.set_num_threads(1)
    rank = current().rank
    try:
        torch.save(run_all(tokenizer, out), out / f"rank{rank}.pt")
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
