"""What a recovery run did: objective, data, tokens, steps, loss curve, perplexity and sparsity before/after."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RecoveryReport:
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    steps: int = 0  # optimizer steps done (all of them when ``completed``)
    tokens: int = 0  # training tokens seen: steps x batch x accumulation x seqlen
    epochs: float = 0.0  # tokens / tokens available: > 1 when the data was visited more than once
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    perplexity: dict[str, Any] = field(default_factory=dict)  # dense, before, after, dataset, seqlen, windows
    sparsity_before: float = 0.0
    sparsity_after: float = 0.0
    masked_parameters: int = 0
    width_pruned: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    completed: bool = False
    checkpoint: str | None = None  # the resumable Trainer checkpoint left behind, if any

    @property
    def gap_closed(self) -> float | None:
        """Share of the log-perplexity gap to the dense model closed: (ln before - ln after) / (ln before - ln dense)."""
        dense, before, after = (self.perplexity.get(k) for k in ("dense", "before", "after"))
        if None in (dense, before, after) or before <= dense:
            return None
        return (math.log(before) - math.log(after)) / (math.log(before) - math.log(dense))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loss_curve"] = [list(point) for point in self.loss_curve]
        data["gap_closed"] = self.gap_closed
        return data

    def summary(self) -> str:
        cfg = self.config
        lines = [f"recovery: {cfg.get('objective')} objective, {cfg.get('method')} fine-tuning, {self.steps} steps, "
                 f"{self.tokens} tokens ({self.epochs:.2f} passes over {self.data.get('source')}), "
                 f"{self.wall_s:.0f} s"]
        if self.loss_curve:
            lines.append(f"training loss: first {self.loss_curve[0][1]:.4f}, last {self.loss_curve[-1][1]:.4f}")
        lines.append(f"sparsity of the prunable weights: before {self.sparsity_before:.4f}, "
                     f"after {self.sparsity_after:.4f}")
        ppl = self.perplexity
        if ppl.get("after") is not None:
            dense = f"dense {ppl['dense']:.3f}, " if ppl.get("dense") is not None else ""
            closed = f" ({self.gap_closed:.0%} of the log-perplexity gap closed)" if self.gap_closed is not None else ""
            lines.append(f"perplexity ({ppl.get('dataset')}, {ppl.get('windows')} windows x {ppl.get('seqlen')} "
                         f"tokens): {dense}before {ppl['before']:.3f}, after {ppl['after']:.3f}{closed}")
        return "\n".join(lines)
