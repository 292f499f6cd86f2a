"""The ``README.md`` model card of a saved pruned model (``huggingface_hub.ModelCard``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["pruned", "sparse", "alpha-pruning"]
LOCAL_HINT = "path/to/this/folder"  # replaced by the repo id when the folder is pushed
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_base_model(base_model: Any) -> str | None:
    """Only a Hub repo id is valid card metadata; local paths and GGUF names stay in the prose."""
    if isinstance(base_model, str) and _REPO_ID.match(base_model) and not Path(base_model).exists():
        return base_model
    return None


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _load_section(fmt: str, repo_hint: str) -> str:
    """The writer's own "how to load" text; ``width`` (blocks of different widths) is the loader's."""
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
    from .writers import get_writer

    return get_writer(fmt).load_section(repo_hint)


def _blocks_table(blocks: list[dict[str, Any]], metric: str) -> str:
    rows = [f"| block | {metric} | target sparsity | achieved sparsity |", "| ---: | ---: | ---: | ---: |"]
    for block in blocks:
        rows.append(
            f"| {block.get('index', '?')} | {_fmt(block.get('score'), 3)} "
            f"| {_fmt(block.get('target_sparsity'))} | {_fmt(block.get('achieved_sparsity'))} |"
        )
    return "\n".join(rows)


def _calibration_rows(calibration: dict[str, Any], search: dict[str, Any]) -> list[str]:
    """Table rows saying which calibration windows were used and, for ε auto, the whole sweep."""
    rows = []
    if calibration:
        rows.append(f"| calibration | {calibration.get('windows', calibration.get('nsamples', '?'))} windows x "
                    f"{calibration.get('seqlen', '?')} tokens, {calibration.get('sampling', '?')} sampling, "
                    f"from {calibration.get('source', calibration.get('dataset', '?'))} |")
    if search:
        sweep = ", ".join(f"{e:g}: {_fmt(p, 2)}" for e, p in zip(search.get("grid", []),
                                                                 search.get("heldout_perplexity", [])))
        label = "ATP β (auto)" if search.get("parameter") == "atp_beta" else "ε (auto)"
        rows.append(f"| {label} | {search.get('chosen')}, lowest held-out perplexity on "
                    f"{search.get('heldout_windows')} windows of {search.get('heldout_source')} ({sweep}) |")
    return rows


def _quantization_rows(quantization: dict[str, Any]) -> list[str]:
    """Rows on the integer weights: how they were quantised, the widths, and what they cost on disk."""
    if not quantization:
        return []
    widths = sorted(set((quantization.get("bits") or {}).values()))
    group = quantization.get("group_size")
    return [
        f"| quantisation | {quantization.get('method')}, symmetric int, "
        f"{'groups of ' + str(group) if group else 'one scale per row'}; widths {', '.join(map(str, widths))} "
        f"({quantization.get('bit_allocation')} allocation) |",
        f"| bits per quantised weight | {_fmt(quantization.get('average_bits'), 3)} average (budget "
        f"{_fmt(quantization.get('bits_budget'), 3)}), {_fmt(quantization.get('bits_per_weight_with_scales'), 3)} "
        "with scales |",
    ]


def _allocation_name(allocation: str, structure: str) -> str:
    return f"none, fixed {structure} pattern" if ":" in structure and not structure.startswith("mixed") else allocation


def _allocation_text(allocation: str, metric: str, structure: str) -> str:
    """One sentence on how sparsity was spread over the blocks, true to the mode that ran."""
    if ":" in structure and not structure.startswith("mixed"):
        return f"every layer follows the same {structure} pattern (N of every M consecutive weights kept)"
    spread = {
        "alpha": "AlphaPruning gave each block its own sparsity from the heavy-tailed shape of its weight "
        f"eigenspectra (metric `{metric}`; lower alpha, less sparsity)",
        "owl": "OWL gave each block its own sparsity from its share of outlier activations",
        "uniform": "every block got the same sparsity",
    }.get(allocation, f"the `{allocation}` allocation spread the sparsity over the blocks")
    if structure.startswith("mixed"):
        spread += f", rounded to a whole N per block in a {structure} pattern"
    return spread


def _perplexity_row(perplexity: dict[str, Any]) -> str | None:
    """The evaluation row: numbers with the dataset, window length and window count they were measured on."""
    if perplexity.get("dense") is None and perplexity.get("pruned") is None:
        return None
    protocol = perplexity.get("dataset") or "evaluation set"
    if perplexity.get("windows") and perplexity.get("seqlen"):
        protocol += f", {perplexity['windows']} windows x {perplexity['seqlen']} tokens"
    return (f"| perplexity ({protocol}) | dense {_fmt(perplexity.get('dense'), 2)} -> "
            f"pruned {_fmt(perplexity.get('pruned'), 2)} |")


def _evaluation_rows(evaluation: dict[str, Any]) -> list[str]:
    """Rows for the KL divergence to the dense model and the block spectra after pruning, when measured."""
    rows = []
    kl = evaluation.get("kl") or {}
    if kl.get("kl_mean") is not None:
        rows.append(f"| KL divergence to the dense model ({kl.get('dataset')}, {kl.get('windows')} windows x "
                    f"{kl.get('seqlen')} tokens) | mean {_fmt(kl['kl_mean'])}, median {_fmt(kl.get('kl_median'))}, "
                    f"p99 {_fmt(kl.get('kl_p99'))} nats/token; top-1 agreement {_fmt(kl.get('top1_agreement'))} |")
    spectra = evaluation.get("spectra") or {}
    if spectra.get("mean_before") is not None:
        rows.append(f"| mean block {spectra.get('metric')} | before pruning {_fmt(spectra['mean_before'], 3)}, "
                    f"after {_fmt(spectra.get('mean_after'), 3)} |")
    return rows


def _zero_shot_section(zero_shot: dict[str, Any]) -> list[str]:
    """The lm-eval results table, with the harness version, task versions, shots and document limit."""
    tasks = zero_shot.get("tasks") or {}
    if not tasks:
        return []
    limit = zero_shot.get("limit")
    lines = ["## Zero-shot accuracy", "",
             f"Measured with lm-evaluation-harness {zero_shot.get('lm_eval_version', '?')} on the pruned model"
             + (f", first {limit} documents per task" if limit is not None else ", whole test sets") + ".", "",
             "| task | version | shots | documents | acc | acc_norm |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, entry in tasks.items():
        lines.append(f"| {name} | {entry.get('version')} | {entry.get('num_fewshot')} | {entry.get('samples')} "
                     f"| {_fmt(entry.get('acc'))} | {_fmt(entry.get('acc_norm'))} |")
    if len(tasks) > 1:
        lines.append(f"| mean | | | | {_fmt(zero_shot.get('mean_accuracy'))} | |")
    return lines + [""]


def _recovery_rows(recovery: dict[str, Any]) -> list[str]:
    """What the recovery after pruning did (objective, method, data, tokens) and what it bought."""
    if not recovery:
        return []
    config = recovery.get("config") or {}
    data = recovery.get("data") or {}
    rows = [f"| recovery | {config.get('objective', '?')} objective, {config.get('method', '?')} fine-tuning, "
            f"{recovery.get('steps', '?')} steps, {recovery.get('tokens', '?')} tokens of {data.get('source', '?')}; "
            "pruned weights kept at zero |"]
    ppl = recovery.get("perplexity") or {}
    if ppl.get("after") is not None:
        rows.append(f"| perplexity after recovery ({ppl.get('dataset')}, {ppl.get('windows')} windows x "
                    f"{ppl.get('seqlen')} tokens) | before {_fmt(ppl.get('before'), 2)} -> after "
                    f"{_fmt(ppl.get('after'), 2)} |")
    return rows


def build_model_card(
    metadata: dict[str, Any], *, fmt: str, chart_file: str | None, repo_hint: str = LOCAL_HINT
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
    structure = metadata.get("sparsity_structure") or "unstructured"
    # Under a fixed N:M pattern the pattern sets the sparsity; the weighted block targets say what was aimed at.
    target = metadata.get("target_sparsity", config.get("sparsity"))
    achieved = metadata.get("achieved_sparsity")
    width_only = bool(metadata.get("width_only"))  # typed run semantics from the report, not re-parsed
    if width_only:  # no zeros inside the weights: whole heads and channels are gone
        method = "width pruning, " + ("least-squares refit" if config.get("structured_refit", True) else "slice only")
        achieved = None
    lines = [
        f"# {Path(str(base_model)).name if base_model else 'Model'} pruned with optimum-alpha",
        "",
        (f"This model was width-pruned with optimum-alpha (`{method}`): whole attention heads and MLP channels "
         "removed; " if width_only else
         f"This model was pruned with optimum-alpha using the `{method}` pruning criterion inside each layer; ")
        + f"{_allocation_text(allocation, metric, structure)}.",
        "",
        "| | |",
        "| --- | --- |",
        f"| base model | {base_model or 'unknown'} |",
        f"| pruning method | {method} (allocation: {_allocation_name(allocation, structure)}) |",
        f"| sparsity structure | {structure} |",
        f"| target sparsity | {_fmt(target)} |",
        f"| achieved sparsity (pruned layers) | {_fmt(achieved)} |",
        f"| checkpoint format | {fmt} |",
        f"| optimum-alpha version | {metadata.get('library_version', 'unknown')} |",
    ]
    lines += _calibration_rows(metadata.get("calibration") or {}, metadata.get("epsilon_search") or {})
    structured = metadata.get("structured") or []
    if structured and all("params" in b for b in structured):
        removed = sum(b["removed_fraction"] * b["params"] for b in structured) / sum(b["params"] for b in structured)
        lines.append(f"| structure | width: whole attention heads and MLP channels removed, "
                     f"{_fmt(removed)} of the block weights |")
    lines += _quantization_rows(metadata.get("quantization") or {})
    perplexity_row = _perplexity_row(metadata.get("perplexity") or {})
    if perplexity_row:
        lines.append(perplexity_row)
    evaluation = metadata.get("evaluation") or {}
    lines += _evaluation_rows(evaluation)
    lines += _recovery_rows(metadata.get("recovery") or {})
    pinned = metadata.get("pinned_blocks") or []
    if pinned:
        lines.append(f"| blocks pinned at the sparsity cap | {', '.join(str(i) for i in pinned)} |")
    lines += ["", "## How to load", "", _load_section(fmt, repo_hint)]
    lines += _zero_shot_section(evaluation.get("zero_shot") or {})
    blocks = metadata.get("blocks") or []
    score = str(metadata.get("score_name") or "score").replace("_", " ") if allocation != "alpha" else metric
    if blocks:
        lines += ["## Per-block allocation", ""]
        if chart_file:
            lines += [f"![Block {score} and sparsity by depth]({chart_file})", ""]
        lines += [_blocks_table(blocks, score), ""]
    lines += [
        "## Files",
        "",
        "- `alpha_pruning.json`: pruning config, per-block scores and sparsities, achieved sparsity per "
        "layer, calibration details and library version.",
    ]
    if chart_file:
        after = " before and after pruning" if (evaluation.get("spectra") or {}).get("after") else ""
        lines.append(f"- `{chart_file}`: chart of block {metric}{after} and sparsity.")
    body = "\n".join(lines) + "\n"
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
