"""What a pruning run did: per-block targets and achieved sparsities, per-layer sparsities, timing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


def layer_sparsity(weight: torch.Tensor) -> float:
    """Fraction of exact zeros in a weight."""
    return float((weight == 0).sum()) / weight.numel()


@dataclass
class BlockReport:
    index: int
    score: float | None
    target_sparsity: float
    achieved_sparsity: float
    num_params: int
    seconds: float
    ignored_params: int = 0  # weights of the block kept dense on purpose (routers, ``ignore``)


@dataclass
class PruningReport:
    config: dict[str, Any]
    blocks: list[BlockReport] = field(default_factory=list)
    layers: dict[str, float] = field(default_factory=dict)
    layer_targets: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    # epsilon="auto": {"grid", "heldout_perplexity" (one per grid value), "chosen", "heldout_windows", ...}
    epsilon_search: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    completed: bool = False
    sparsity_structure: str = "unstructured"  # "2:4", "mixed:8" or "unstructured"
    ignored: dict[str, int] = field(default_factory=dict)  # weight name -> parameters kept dense on purpose
    uncalibrated: list[str] = field(default_factory=list)  # expert matrices no calibration token reached
    # structure="width": per block, the kept width, removed fraction and the refit's reconstruction errors.
    structured: list[dict[str, Any]] = field(default_factory=list)
    # bits set: method, widths per matrix, average and stored bits per weight (see quantization.plan)
    quantization: dict[str, Any] = field(default_factory=dict)
    reconstruction_s: float = 0.0  # reconstruct="block": seconds spent refitting (included in elapsed_s)
    # Typed run semantics, set once by the stage that makes the report (nobody re-parses the config dict):
    sparsity_cap: float | None = None  # the most any unit could get (None: a fixed N:M pattern decides)
    score_name: str = "score"  # what the block scores are (alpha_hill, outlier_ratio...)
    width_only: bool = False  # structure="width" without a following unstructured stage

    @property
    def total_sparsity(self) -> float:
        """Parameter-weighted achieved sparsity over the pruned matrices of the processed blocks."""
        params = sum(b.num_params for b in self.blocks)
        return sum(b.achieved_sparsity * b.num_params for b in self.blocks) / params if params else 0.0

    @property
    def target_sparsity(self) -> float:
        """Parameter-weighted allocated sparsity: under an N:M pattern, what the pattern gives, not ``sparsity``."""
        params = sum(b.num_params for b in self.blocks)
        return sum(b.target_sparsity * b.num_params for b in self.blocks) / params if params else 0.0

    @property
    def pinned_blocks(self) -> list[int]:
        """Blocks the allocation held at its cap (``max_sparsity``, or (M-1)/M under mixed N:M): the
        allocation wanted more sparsity there and moved the rest to other blocks."""
        if self.sparsity_cap is None:
            return []
        return [b.index for b in self.blocks if b.target_sparsity >= self.sparsity_cap - 1e-6]

    @property
    def block_weight_sparsity(self) -> float:
        """Achieved sparsity over *every* weight matrix inside the processed blocks, ignored ones counted dense."""
        params = sum(b.num_params + b.ignored_params for b in self.blocks)
        return sum(b.achieved_sparsity * b.num_params for b in self.blocks) / params if params else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_sparsity"] = self.total_sparsity
        data["target_sparsity"] = self.target_sparsity
        data["pinned_blocks"] = self.pinned_blocks
        data["block_weight_sparsity"] = self.block_weight_sparsity
        return data

    def summary(self) -> str:
        """A plain-text table of the blocks."""
        lines = [f"{'block':>5} {'score':>9} {'target':>8} {'achieved':>9} {'time s':>7}"]
        for b in self.blocks:
            score = f"{b.score:9.4f}" if b.score is not None else f"{'-':>9}"
            lines.append(
                f"{b.index:>5} {score} {b.target_sparsity:8.4f} {b.achieved_sparsity:9.4f} {b.seconds:7.2f}"
            )
        lines.append(f"total sparsity {self.total_sparsity:.4f} in {self.elapsed_s:.1f} s")
        if self.ignored:
            lines.append(
                f"kept dense on purpose: {len(self.ignored)} weight(s), {sum(self.ignored.values())} parameters "
                f"(sparsity over all block weights {self.block_weight_sparsity:.4f})"
            )
        if self.uncalibrated:
            lines.append(f"pruned by magnitude, no calibration token routed: {', '.join(self.uncalibrated)}")
        return "\n".join(lines)


def run_metadata(report: PruningReport | None, *, base_model: str | None,
                 perplexity: dict[str, Any], esd_blocks: list[dict[str, float]]) -> dict[str, Any]:
    """What ``alpha_pruning.json`` and the model card record about a run (no run yet: an empty report)."""
    ran = report is not None
    report = report if report is not None else PruningReport(config={})
    return {
        "library": "optimum-alpha",  # the version is added by the writer (library_version), once
        "base_model": base_model,
        "config": report.config if ran else None,
        "metric": report.config.get("metric") if ran else None,
        "score_name": report.score_name,
        "width_only": report.width_only,
        "blocks": [{"index": b.index, "score": b.score, "target_sparsity": b.target_sparsity,
                    "achieved_sparsity": b.achieved_sparsity} for b in report.blocks],
        "layers": report.layers,
        "total_sparsity": report.total_sparsity if ran else None,
        "target_sparsity": report.target_sparsity if ran else None,
        "sparsity_structure": report.sparsity_structure if ran else None,
        "pinned_blocks": report.pinned_blocks,
        "block_weight_sparsity": report.block_weight_sparsity if ran else None,
        "ignored": report.ignored,
        "uncalibrated": report.uncalibrated,
        "calibration": report.calibration,
        "epsilon_search": report.epsilon_search,
        "structured": report.structured,
        "quantization": report.quantization,
        "perplexity": dict(perplexity),
        "esd_blocks": esd_blocks,
    }
