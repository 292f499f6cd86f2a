"""Text sources for calibration and evaluation, shipped with the package so nothing has to be downloaded,
and the calibration window sampling (:func:`sample_calibration`).

Names: ``"c4"`` (200 C4 documents, calibration; for calibration the references' Hub shard when reachable,
see :mod:`optimum_alpha.c4`), ``"wikitext2"`` (WikiText-2 raw test split, evaluation),
``"wikitext2-validation"``. Any local ``.txt``/``.json``/``.jsonl``/``.parquet`` file, or a ``datasets``
``Dataset`` with a ``text`` column, works too. Licences: ``optimum_alpha/data/LICENSE-DATA.md``.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CalibrationDataError
from .options import SAMPLINGS

SHIPPED_DATASETS = {
    "c4": "c4_sample.jsonl",
    "wikitext2": "wikitext2_test.jsonl",
    "wikitext2-validation": "wikitext2_validation.jsonl",
}
TEXT_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
ENCODING = "utf-8-sig"  # UTF-8, with or without the byte-order mark some editors write
# A calibration window is drawn from a document's first DOCUMENT_CHARS characters: tokenizing a huge single
# line (a whole dump on one row) would otherwise stall for minutes to produce one window.
DOCUMENT_CHARS = 1_000_000


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
    data = json.loads(path.read_text(encoding=ENCODING))
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
            return [path.read_text(encoding=ENCODING)]
        if suffix == ".jsonl":
            with path.open(encoding=ENCODING) as handle:
                return _text_rows([json.loads(line) for line in handle if line.strip()], path)
        if suffix == ".json":
            return _read_json_rows(path)
        if suffix == ".parquet":
            return _read_parquet_rows(path)
    except UnicodeDecodeError as err:
        raise CalibrationDataError(f"{path} is not UTF-8 text ({err}); save it as UTF-8.") from err
    except json.JSONDecodeError as err:
        raise CalibrationDataError(f"{path} is not valid JSON ({err}).") from err
    except RecursionError as err:
        raise CalibrationDataError(
            f"{path} nests JSON arrays or objects too deeply to read; a row is a string or an object with a "
            "string 'text'."
        ) from err
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


PAPER_NSAMPLES = 128  # the references' calibration set: 128 windows


@dataclass
class CalibrationSample:
    """Calibration windows, optional held-out windows disjoint from them, and how they were drawn."""

    ids: torch.Tensor
    heldout: torch.Tensor | None
    sampling: str
    source: str
    notices: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What the report and the model card record about the calibration set."""
        return {"sampling": self.sampling, "windows": int(self.ids.shape[0]), "source": self.source,
                "notices": list(self.notices)}


def _label(source: Any) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"


def _calibration_rows(source: Any) -> tuple[list[str], str]:
    """Non-empty rows of a calibration source and its label; ``"c4"`` goes through :func:`c4.c4_source`."""
    label = _label(source)
    if isinstance(source, str) and source == "c4":
        from .c4 import c4_source

        source, label = c4_source()
    return [row for row in load_texts(source) if row.strip()], label


def _document_windows(tokenizer, rows: list[str], count: int, seqlen: int,
                      seed: int) -> tuple[list[torch.Tensor], int]:
    """One window per document at a random offset, as the references (documents of <= seqlen tokens skipped),
    and the number of rows visited.

    Documents are visited in the (already shuffled) order without replacement, so no two windows share a
    token; they are tokenized one at a time, so a large source costs only the documents actually visited."""
    rng = random.Random(seed)
    windows: list[torch.Tensor] = []
    visited = 0
    for row in rows:
        if len(windows) == count:
            break
        visited += 1
        doc = tokenizer(row[:DOCUMENT_CHARS], return_tensors="pt", add_special_tokens=False).input_ids[0]
        if doc.numel() > seqlen:
            offset = rng.randint(0, doc.numel() - seqlen - 1)
            windows.append(doc[offset : offset + seqlen])
    return windows, visited


def _joined_windows(tokenizer, rows: list[str], count: int, seqlen: int) -> torch.Tensor:
    """Rows joined with blank lines, tokenized once and cut into consecutive (disjoint) windows."""
    if not rows:
        return torch.empty(0, seqlen, dtype=torch.long)
    ids = _leading_tokens(tokenizer, "\n\n".join(rows), count * seqlen)
    return ids[: (ids.numel() // seqlen) * seqlen].reshape(-1, seqlen)[:count].clone()


def _leading_tokens(tokenizer, text: str, needed: int) -> torch.Tensor:
    """The tokens of ``text``, or at least its first ``needed`` ones: a growing prefix is tokenized (from
    DOCUMENT_CHARS characters, doubling) so a huge source costs what the windows need. The last tokens of a
    prefix (a word cut in two) are dropped; those before are the tokens of the whole text."""
    chars = max(DOCUMENT_CHARS, needed * 8)
    while True:
        whole = chars >= len(text)
        ids = tokenizer(text if whole else text[:chars], return_tensors="pt", add_special_tokens=False).input_ids[0]
        if whole:
            return ids
        if ids.numel() >= needed + _PREFIX_MARGIN:
            return ids[: ids.numel() - _PREFIX_MARGIN]
        chars *= 2


_PREFIX_MARGIN = 64  # tokens dropped at the end of a tokenized prefix


def _too_short(label: str, available: int, wanted: int, heldout: int, seqlen: int) -> CalibrationDataError:
    extra = f" (+ {heldout} held-out)" if heldout else ""
    return CalibrationDataError(
        f"Calibration source {label} has {available * seqlen} usable tokens but nsamples x seqlen = "
        f"{wanted}{extra} x {seqlen} = {(wanted + heldout) * seqlen} are needed; lower nsamples or seqlen, "
        "or give more text."
    )


def _document_heldout(tokenizer, rows: list[str], heldout: int, seqlen: int, seed: int,
                      notices: list[str]) -> torch.Tensor:
    """Held-out windows from the documents the calibration draw never visited (joined if too few are long)."""
    windows, _ = _document_windows(tokenizer, rows, heldout, seqlen, seed + 1)
    if len(windows) == heldout:
        return torch.stack(windows)
    notices.append(f"held-out windows are cut from the joined unused documents (only {len(windows)} of them "
                   f"are longer than {seqlen} tokens)")
    return _joined_windows(tokenizer, rows, heldout, seqlen)


def sample_calibration(tokenizer, source: Any, nsamples: int | None, seqlen: int, seed: int = 0,
                       sampling: str = "document", heldout: int = 0) -> CalibrationSample:
    """Calibration windows of ``seqlen`` tokens, plus ``heldout`` windows disjoint from them (ε search).

    ``"document"`` (default, as the references): each window lies inside one document longer than ``seqlen``,
    at a random offset. When the source has fewer such documents than windows, the windows are ``"joined"``
    instead (documents shuffled, joined with blank lines, cut into consecutive windows) and a notice says so.
    ``nsamples=None`` asks for the paper's 128 windows, or as many as the source holds (with a notice).
    The calibration windows do not depend on ``heldout``; held-out windows come from documents (or, joined,
    tokens) that the calibration windows do not use.
    """
    if sampling not in SAMPLINGS:
        raise CalibrationDataError(f"Unknown calibration sampling {sampling!r}; use 'document' or 'joined'.")
    rows, label = _calibration_rows(source)
    random.Random(seed).shuffle(rows)
    wanted = PAPER_NSAMPLES if nsamples is None else nsamples
    notices: list[str] = []
    if sampling == "document":
        windows, visited = _document_windows(tokenizer, rows, wanted, seqlen, seed)
        if len(windows) == wanted:
            held = _document_heldout(tokenizer, rows[visited:], heldout, seqlen, seed, notices) if heldout else None
            if held is not None and held.shape[0] < heldout:
                raise _too_short(label, wanted + held.shape[0], wanted, heldout, seqlen)
            return CalibrationSample(torch.stack(windows), held, "document", label, notices)
        notices.append(f"only {len(windows)} documents of {label} are longer than {seqlen} tokens, fewer than "
                       f"the {wanted} windows wanted: windows are cut from the joined documents instead "
                       "(calibration_sampling='joined')")
    joined = _joined_windows(tokenizer, rows, wanted + heldout, seqlen)
    available = joined.shape[0]
    if nsamples is None and available < wanted + heldout:
        wanted = max(available - heldout, 0)
        notices.append(f"{label} holds {available} windows of {seqlen} tokens: calibrating on {wanted} "
                       f"instead of the paper's {PAPER_NSAMPLES}")
    if available < wanted + heldout or wanted < 1:
        raise _too_short(label, available, wanted, heldout, seqlen)
    held = joined[wanted : wanted + heldout].clone() if heldout else None
    return CalibrationSample(joined[:wanted].clone(), held, "joined", label, notices)


def calibration_windows(tokenizer, source: Any, nsamples: int | None, seqlen: int, seed: int = 0,
                        sampling: str = "document") -> torch.Tensor:
    """The (nsamples, seqlen) LongTensor of :func:`sample_calibration`'s calibration windows."""
    return sample_calibration(tokenizer, source, nsamples, seqlen, seed, sampling).ids


def evaluation_tokens(tokenizer, dataset: Any = "wikitext2") -> torch.Tensor:
    """The standard perplexity protocol's token stream: rows joined with "\\n\\n", tokenized once."""
    rows = load_texts(dataset)
    return tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
