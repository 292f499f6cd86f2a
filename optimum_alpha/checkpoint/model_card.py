"""The ``README.md`` model card of a saved pruned model (``huggingface_hub.ModelCard``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["pruned", "sparse", "alpha-pruning"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_base_model(base_model: Any) -> str | None:
    """Only a Hub repo id is valid card metadata; local paths and GGUF names stay in the prose."""
    if isinstance(base_model, str) and _REPO_ID.match(base_model) and not Path(base_model).exists():
        return base_model
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _load_section(fmt: str, repo_hint: str) -> str:
    if fmt == "sparse":
        return f"""The weights are stored in the `alpha_sparse` bitmask format (kept values + packed bit
mask per pruned Linear layer). **Loading needs `optimum-alpha`**: importing it registers the format
with transformers.

```python
import optimum_alpha  # registers quant_method "alpha_sparse" with transformers
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}")
# or: model = optimum_alpha.load_pruned("{repo_hint}")
```

> **Without `optimum-alpha` this checkpoint does not load**: transformers logs an unknown quantization
> type and stops with a size-mismatch error on one marker weight. Never pass `ignore_mismatched_sizes=True`
> to get past it: the Linear weights would be left randomly initialised.
"""
    if fmt == "width":
        return f"""Attention heads and MLP channels were removed, and the blocks have different widths
(`alpha_block_widths` in `config.json`). **Loading needs `optimum-alpha`**: importing it registers the
`alpha_width` loader, which gives every block its own shape before the weights load.

```python
import optimum_alpha  # registers quant_method "alpha_width" with transformers
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}")
```

> **Without `optimum-alpha` this checkpoint does not load** (a size-mismatch error); never pass
> `ignore_mismatched_sizes=True`, the smaller weights would be replaced by random ones.
"""
    return f"""The weights are ordinary safetensors with the pruned entries stored as zeros; nothing beyond
transformers is needed:

```python
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{repo_hint}")
```
"""


def _blocks_table(blocks: list[dict[str, Any]], metric: str) -> str:
    rows = [f"| block | {metric} | target sparsity | achieved sparsity |", "| ---: | ---: | ---: | ---: |"]
    for block in blocks:
        rows.append(
            f"| {block.get('index', '?')} | {_fmt(block.get('score'), 3)} "
            f"| {_fmt(block.get('target_sparsity'))} | {_fmt(block.get('achieved_sparsity'))} |"
        )
    return "\n".join(rows)


def build_model_card(
    metadata: dict[str, Any], *, fmt: str, chart_file: str | None, repo_hint: str = "path/to/this/folder"
) -> ModelCard:
    """Build the card from the ``alpha_pruning.json`` content; every field may be missing."""
    config = metadata.get("config") or {}
    base_model = metadata.get("base_model")
    hub_base = _hub_base_model(base_model)
    card_data = ModelCardData(
        base_model=hub_base,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(TAGS),
    )
    method = config.get("method") or metadata.get("method") or "unknown"
    allocation = config.get("allocation") or "alpha"
    metric = metadata.get("metric") or config.get("metric") or "alpha_hill"
    target = config.get("sparsity")
    achieved = metadata.get("achieved_sparsity")
    perplexity = metadata.get("perplexity") or {}
    width_only = config.get("structure") == "width" and config.get("unstructured_sparsity") is None \
        and not config.get("nm")
    if width_only:  # no zeros inside the weights: whole heads and channels are gone
        method = "width pruning, " + ("least-squares refit" if config.get("structured_refit", True) else "slice only")
        achieved = None
    lines = [
        f"# {Path(str(base_model)).name if base_model else 'Model'} pruned with AlphaPruning",
        "",
        f"This model was pruned with optimum-alpha (AlphaPruning layer-wise sparsity "
        f"allocation from weight eigenspectra, metric `{metric}`) using `{method}`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| base model | {base_model or 'unknown'} |",
        f"| pruning method | {method} (allocation: {allocation}) |",
        f"| target sparsity | {_fmt(target)} |",
        f"| achieved sparsity (pruned layers) | {_fmt(achieved)} |",
        f"| checkpoint format | {fmt} |",
        f"| optimum-alpha version | {metadata.get('library_version', 'unknown')} |",
    ]
    structured = metadata.get("structured") or []
    if structured and all("params" in b for b in structured):
        removed = sum(b["removed_fraction"] * b["params"] for b in structured) / sum(b["params"] for b in structured)
        lines.append(f"| structure | width: whole attention heads and MLP channels removed, "
                     f"{_fmt(removed)} of the block weights |")
    if perplexity.get("dense") is not None or perplexity.get("pruned") is not None:
        dataset = perplexity.get("dataset") or "evaluation set"
        lines.append(
            f"| perplexity ({dataset}) | dense {_fmt(perplexity.get('dense'), 2)} -> "
            f"pruned {_fmt(perplexity.get('pruned'), 2)} |"
        )
    lines += ["", "## How to load", "", _load_section(fmt, repo_hint)]
    blocks = metadata.get("blocks") or []
    if blocks:
        lines += ["## Per-block allocation", ""]
        if chart_file:
            lines += [f"![Block {metric} and sparsity by depth]({chart_file})", ""]
        lines += [_blocks_table(blocks, metric), ""]
    lines += [
        "## Files",
        "",
        "- `alpha_pruning.json`: pruning config, per-block scores and sparsities, achieved sparsity per "
        "layer, calibration details and library version.",
    ]
    if chart_file:
        lines.append(f"- `{chart_file}`: chart of block {metric} and sparsity.")
    body = "\n".join(lines) + "\n"
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
