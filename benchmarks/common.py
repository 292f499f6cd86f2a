"""Benchmark helpers: load a model once, run configs from its dense weights, print markdown tables.

A benchmark loads the model and runs the ESD analysis once (:class:`Session`), then restores the dense
weights before every pruning run, so that N runs cost one load instead of N.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# A model factory returns (model, tokenizer); the tests pass one that builds a tiny random model.
ModelFactory = Callable[[], tuple[torch.nn.Module, Any]]


def machine_description() -> str:
    """One line naming the CPU/GPU, thread count and library versions, for the docs."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, {gpu}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats get 2 decimals unless already formatted as strings."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.2f}" if abs(value) < 1e5 else f"{value:.3g}"
        return "-" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def print_report(title: str, settings: str, timing: str, body: str) -> str:
    """Print (and return) one benchmark's markdown section: title, protocol, machine, timing, tables."""
    text = f"## {title}\n\n{settings}\nmachine: {machine_description()}\n{timing}\n\n{body}\n"
    print(text, flush=True)
    return text


@dataclass
class RunResult:
    """One pruning run: its perplexity, wall time and per-block sparsities."""

    perplexity: float
    prune_s: float
    eval_s: float
    total_sparsity: float
    block_targets: list[float]


class Session:
    """A loaded model with its ESD analysis and a copy of its dense weights."""

    def __init__(self, model: str = "smollm2-135m", factory: ModelFactory | None = None,
                 show_progress: bool = False, device: str = "cpu", dtype: torch.dtype | None = None) -> None:
        from optimum_alpha import AlphaPruner

        start = time.perf_counter()
        if factory is not None:
            net, tokenizer = factory()
            net = net.to(dtype) if dtype is not None else net
            self.pruner = AlphaPruner.from_pretrained(net.to(device), tokenizer=tokenizer,
                                                      show_progress=show_progress)
        else:
            placement: dict[str, Any] = {} if device == "cpu" else {"device_map": device}
            if dtype is not None:
                placement["dtype"] = dtype
            self.pruner = AlphaPruner.from_pretrained(model, show_progress=show_progress, **placement)
        self.setup_s = time.perf_counter() - start
        self.show_progress = show_progress
        self.dense_state = {k: v.detach().clone() for k, v in self.pruner.model.state_dict().items()}

    @property
    def model(self) -> torch.nn.Module:
        return self.pruner.model

    @property
    def tokenizer(self) -> Any:
        return self.pruner.tokenizer

    def restore(self) -> None:
        """Put the dense weights back (the ESD analysis stays valid: it was computed on them)."""
        self.model.load_state_dict(self.dense_state)

    def perplexity(self, seqlen: int | None, max_windows: int | None, dataset: Any = "wikitext2") -> float:
        from optimum_alpha.evaluate import perplexity

        return perplexity(self.model, self.tokenizer, dataset=dataset, seqlen=seqlen, max_windows=max_windows,
                          show_progress=self.show_progress)

    def run(self, config: Any, eval_seqlen: int | None, max_windows: int | None,
            dataset: Any = "wikitext2") -> RunResult:
        """Prune the dense model with ``config`` and evaluate it; the model is pruned afterwards."""
        self.restore()
        start = time.perf_counter()
        _, report = self.pruner.prune(config, show_progress=self.show_progress)
        prune_s = time.perf_counter() - start
        start = time.perf_counter()
        ppl = self.perplexity(eval_seqlen, max_windows, dataset)
        return RunResult(ppl, prune_s, time.perf_counter() - start, report.total_sparsity,
                         [b.target_sparsity for b in report.blocks])
