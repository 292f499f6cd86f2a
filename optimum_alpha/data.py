"""Text sources for calibration and evaluation, shipped with the package so nothing is downloaded.

Names: ``"c4"`` (200 C4 documents, calibration), ``"wikitext2"`` (WikiText-2 raw test split, evaluation),
``"wikitext2-validation"``. Any local ``.txt``/``.json``/``.jsonl``/``.parquet`` file, or a ``datasets``
``Dataset`` with a ``text`` column, works too. Licences: ``optimum_alpha/data/LICENSE-DATA.md``.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .errors import CalibrationDataError

SHIPPED_DATASETS = {
    "c4": "c4_sample.jsonl",
    "wikitext2": "wikitext2_test.jsonl",
    "wikitext2-validation": "wikitext2_validation.jsonl",
}
TEXT_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")


def shipped_path(name: str) -> Path:
    """Filesystem path of one of the shipped data files."""
    return Path(str(resources.files("optimum_alpha") / "data" / SHIPPED_DATASETS[name]))


def _read_file(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line)["text"] for line in handle if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else data.get("text", data.get("data", []))
        return [row["text"] if isinstance(row, dict) else str(row) for row in rows]
    if suffix == ".parquet":
        from datasets import Dataset

        return list(Dataset.from_parquet(str(path))["text"])
    raise CalibrationDataError(
        f"Unsupported data file {path}: use a {', '.join(TEXT_SUFFIXES)} file with a 'text' field per row."
    )


def load_texts(source: Any) -> list[str]:
    """Rows of text from a shipped name, a local file or a ``datasets.Dataset``."""
    if isinstance(source, str) and source in SHIPPED_DATASETS:
        rows = _read_file(shipped_path(source))
        label = source
    elif isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise CalibrationDataError(
                f"Data source {source!r} is neither a shipped dataset ({', '.join(SHIPPED_DATASETS)}) nor an "
                f"existing file. Pass one of those names or the path of a {'/'.join(TEXT_SUFFIXES)} file."
            )
        try:
            rows = _read_file(path)
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise CalibrationDataError(
                f"Could not read text rows from {path}: {err}. Each row needs a 'text' field."
            ) from err
        label = str(path)
    elif hasattr(source, "column_names"):
        if "text" not in source.column_names:
            raise CalibrationDataError(f"The dataset has no 'text' column (columns: {source.column_names}).")
        rows = list(source["text"])
        label = "the given dataset"
    else:
        raise CalibrationDataError(f"Unsupported data source of type {type(source).__name__}.")
    if not any(row.strip() for row in rows):
        raise CalibrationDataError(f"Data source {label} contains no text; give a file with real text rows.")
    return rows


def calibration_windows(tokenizer, source: Any, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``nsamples`` disjoint windows of ``seqlen`` tokens, as a (nsamples, seqlen) LongTensor.

    Documents are shuffled with ``seed``, joined with blank lines, tokenized once and cut into consecutive
    windows, so every window is real contiguous text and no token is used twice.
    """
    rows = [row for row in load_texts(source) if row.strip()]
    random.Random(seed).shuffle(rows)
    ids = tokenizer("\n\n".join(rows), return_tensors="pt", add_special_tokens=False).input_ids[0]
    needed = nsamples * seqlen
    if ids.numel() < needed:
        raise CalibrationDataError(
            f"Calibration source {source if isinstance(source, (str, Path)) else 'dataset'} has {ids.numel()} "
            f"tokens but nsamples x seqlen = {nsamples} x {seqlen} = {needed} are needed; lower nsamples or "
            "seqlen, or give more text."
        )
    return ids[:needed].reshape(nsamples, seqlen).clone()


def evaluation_tokens(tokenizer, dataset: Any = "wikitext2") -> torch.Tensor:
    """The standard perplexity protocol's token stream: rows joined with "\\n\\n", tokenized once."""
    rows = load_texts(dataset)
    return tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
