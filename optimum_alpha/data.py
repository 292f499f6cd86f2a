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


def _text_rows(rows: Any, path: Any) -> list[str]:
    """Every row as a string: a row is a string or an object whose ``text`` is one."""
    if not isinstance(rows, list):
        raise CalibrationDataError(
            f"{path} holds a JSON {type(rows).__name__}; expected a list of rows or an object with a 'text' field"
        )
    texts = []
    for number, row in enumerate(rows, 1):
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str):
            what = "has no 'text' field" if isinstance(row, dict) and "text" not in row else (
                f"has a {type(text).__name__} where a string 'text' is needed")
            raise CalibrationDataError(f"row {number} of {path} {what}; every row needs a string 'text'.")
        texts.append(text)
    return texts


def _read_json_rows(path: Path) -> list[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict):  # {"text": "one document"}, {"text": [...]} or {"data": [...]}
        if isinstance(data.get("text"), str):
            return [data["text"]]
        data = data.get("text", data.get("data"))
        if data is None:
            raise CalibrationDataError(f"{path} is a JSON object without a 'text' or 'data' field.")
    return _text_rows(data, path)


def _read_parquet_rows(path: Path) -> list[str]:
    import pyarrow.parquet as pq  # installed with datasets; read directly so nothing is cached or logged

    try:
        columns = pq.read_schema(path).names
        if "text" not in columns:
            raise CalibrationDataError(f"{path} has no 'text' column (columns: {columns}).")
        rows = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    except CalibrationDataError:
        raise
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise CalibrationDataError(f"{path} is not a readable parquet file ({str(err).splitlines()[0]}).") from err
    return _text_rows(rows, path)


def _read_file(path: Path) -> list[str]:
    """Text rows of a calibration file; every malformed file is a :class:`CalibrationDataError`."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            return [path.read_text(encoding="utf-8")]
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                return _text_rows([json.loads(line) for line in handle if line.strip()], path)
        if suffix == ".json":
            return _read_json_rows(path)
        if suffix == ".parquet":
            return _read_parquet_rows(path)
    except UnicodeDecodeError as err:
        raise CalibrationDataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8.") from err
    except json.JSONDecodeError as err:
        raise CalibrationDataError(f"{path} is not valid JSON ({err}).") from err
    except OSError as err:
        raise CalibrationDataError(f"{path} cannot be read ({err}).") from err
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
        rows = _read_file(path)
        label = str(path)
    elif hasattr(source, "column_names"):
        if "text" not in source.column_names:
            raise CalibrationDataError(f"The dataset has no 'text' column (columns: {source.column_names}).")
        rows = _text_rows(list(source["text"]), "the given dataset")
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
