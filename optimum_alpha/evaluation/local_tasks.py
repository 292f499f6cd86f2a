"""A small multiple-choice task built from the shipped WikiText-2 validation text, for offline zero-shot runs.

``wikitext2_continuation``: the first words of a paragraph, and four continuations of which one is the
paragraph's own next words and three are spans of other paragraphs. A language model picks by
log-likelihood; chance is 25 %. It exists so that lm-eval runs without the Hub (tests, CI, the docs'
examples); it is no substitute for the paper's seven tasks. The shipped copy
(``optimum_alpha/data/tasks/``) is what :func:`write_continuation_task` writes; a test keeps them equal.

    python -m optimum_alpha.evaluation.local_tasks   # rewrites the shipped copy
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

from ..data import load_texts

TASK_NAME = "wikitext2_continuation"
CONTEXT_WORDS = 24
CHOICE_WORDS = 8
CHOICES = 4


def shipped_task_file() -> Path:
    """The shipped YAML task file (its data file sits next to it)."""
    return Path(str(resources.files("optimum_alpha") / "data" / "tasks" / f"{TASK_NAME}.yaml"))


def continuation_rows(texts: list[str], count: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` documents ``{"context", "choices", "label"}`` from paragraphs of ``texts`` long enough for a
    context and a continuation; distractors are spans of other paragraphs, at a seeded random offset."""
    paragraphs = [t.split() for t in texts if not t.strip().startswith("=")]
    paragraphs = [words for words in paragraphs if len(words) >= CONTEXT_WORDS + CHOICE_WORDS]
    if len(paragraphs) < max(count, CHOICES):
        raise ValueError(f"only {len(paragraphs)} paragraphs are long enough; ask for fewer documents")
    rng = random.Random(seed)
    chosen = rng.sample(range(len(paragraphs)), count)
    rows = []
    for index in chosen:
        words = paragraphs[index]
        others = rng.sample([i for i in range(len(paragraphs)) if i != index], CHOICES - 1)
        distractors = []
        for other in others:
            start = rng.randrange(0, len(paragraphs[other]) - CHOICE_WORDS + 1)
            distractors.append(" ".join(paragraphs[other][start:start + CHOICE_WORDS]))
        label = rng.randrange(CHOICES)
        choices = distractors[:label] + [" ".join(words[CONTEXT_WORDS:CONTEXT_WORDS + CHOICE_WORDS])] + distractors[label:]
        rows.append({"context": " ".join(words[:CONTEXT_WORDS]), "choices": choices, "label": label})
    return rows


def continuation_task(data_file: str | Path, name: str = TASK_NAME) -> dict[str, Any]:
    """The lm-eval task dict reading ``data_file`` (JSON lines of :func:`continuation_rows`)."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def write_continuation_task(folder: str | Path, count: int = 100, seed: int = 0) -> Path:
    """Write ``<TASK_NAME>.jsonl`` and a YAML task file naming it by a relative path; returns the YAML."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = continuation_rows(load_texts("wikitext2-validation"), count, seed)
    data = folder / f"{TASK_NAME}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = continuation_task(data.name)
    lines = [f"# {count} documents from WikiText-2 validation (seed {seed}); regenerate with",
             "#   python -m optimum_alpha.evaluation.local_tasks",
             "# data_files paths are relative to this file (optimum-alpha resolves them).",
             f"task: {task['task']}",
             f"dataset_path: {task['dataset_path']}",
             "dataset_kwargs:",
             "  data_files:",
             f"    test: {data.name}",
             f"test_split: {task['test_split']}",
             f"output_type: {task['output_type']}",
             f'doc_to_text: "{task["doc_to_text"]}"',
             f'doc_to_choice: "{task["doc_to_choice"]}"',
             f'doc_to_target: "{task["doc_to_target"]}"',
             "metric_list:",
             *[f"  - metric: {m['metric']}\n    aggregation: mean\n    higher_is_better: true"
               for m in task["metric_list"]],
             "metadata:",
             "  version: 1.0"]
    path = folder / f"{TASK_NAME}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_continuation_task(shipped_task_file().parent))
