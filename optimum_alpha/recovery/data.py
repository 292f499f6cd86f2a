"""Recovery training windows: documents the pruning never saw, packed into windows of ``seqlen`` tokens.

Default source ``"c4"`` is the shipped 200-document C4 sample, with every document that the pruning run's
calibration draw (and its ε-search held-out draw) visited left out: the draw is replayed from the run's record
(seed, windows, window length, sampling), as :func:`optimum_alpha.data.sample_calibration` made it. Evaluation
reads WikiText-2, another corpus. Any other source (a local file, a ``datasets`` Hub id) is used whole.
Documents are tokenized one at a time, joined with the end-of-text token and cut into consecutive windows.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import torch

from ..c4 import SHIPPED_LABEL
from ..data import SHIPPED_DATASETS, TEXT_SUFFIXES, _document_windows, load_texts
from ..errors import CalibrationDataError

logger = logging.getLogger(__name__)


@dataclass
class RecoveryData:
    """The packed windows and what the report says about them."""

    windows: torch.Tensor  # (n, seqlen) LongTensor
    source: str
    documents: int  # documents used
    excluded_documents: int  # left out because the pruning calibration (or ε search) used them
    notices: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "documents": self.documents, "excluded_documents": self.excluded_documents,
                "windows": int(self.windows.shape[0]), "seqlen": int(self.windows.shape[1]),
                "tokens_available": int(self.windows.numel()), "notices": list(self.notices)}


def _token_count(tokenizer: Any, rows: list[str]) -> list[int]:
    return [len(tokenizer(row, add_special_tokens=False).input_ids) for row in rows]


def _documents_covering(tokenizer: Any, rows: list[str], tokens: int) -> int:
    """How many leading rows a joined draw of ``tokens`` tokens can reach (one more, for boundary merges)."""
    total = 0
    for index, count in enumerate(_token_count(tokenizer, rows)):
        total += count + 1
        if total >= tokens:
            return min(index + 2, len(rows))
    return len(rows)


def calibration_documents(tokenizer: Any, rows: list[str], calibration: dict[str, Any],
                          heldout: int) -> int:
    """The number of leading (shuffled) rows the recorded calibration draw and its held-out draw visited."""
    windows = int(calibration.get("windows") or calibration.get("nsamples") or 0)
    seqlen = int(calibration["seqlen"])
    seed = int(calibration.get("seed", 0))
    if calibration.get("sampling") == "document":
        _, visited = _document_windows(tokenizer, rows, windows, seqlen, seed)
        if heldout:
            held, more = _document_windows(tokenizer, rows[visited:], heldout, seqlen, seed + 1)
            if len(held) < heldout:  # the held-out draw fell back to joined windows of the unused rows
                more = _documents_covering(tokenizer, rows[visited:], heldout * seqlen)
            visited += more
        return visited
    return _documents_covering(tokenizer, rows, (windows + heldout) * seqlen)


def _shipped_c4_rows(tokenizer: Any, calibration: dict[str, Any] | None,
                     heldout: int, notices: list[str]) -> tuple[list[str], int]:
    rows = [row for row in load_texts("c4") if row.strip()]
    if not calibration or "seqlen" not in calibration:
        notices.append("no calibration record: documents used for calibration are unknown, the whole C4 sample "
                       "is used")
        return rows, 0
    if calibration.get("source") != SHIPPED_LABEL:
        notices.append(f"calibration used {calibration.get('source')}, not the shipped sample: the whole sample "
                       "is used (it may share documents with that source)")
        return rows, 0
    random.Random(int(calibration.get("seed", 0))).shuffle(rows)  # the order sample_calibration visited
    used = calibration_documents(tokenizer, rows, calibration, heldout)
    return rows[used:], used


def _hub_rows(name: str, config_name: str | None, split: str, tokens: int) -> list[str]:
    """Rows of a ``datasets`` Hub dataset, streamed until about ``tokens`` words are read (4 per token)."""
    try:
        from datasets import load_dataset

        stream = load_dataset(name, config_name, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001 - offline, unknown id, bad split: one line either way
        raise CalibrationDataError(
            f"Recovery dataset {name!r} is neither a shipped name ({', '.join(SHIPPED_DATASETS)}), a local file nor "
            f"a loadable datasets id ({str(err).splitlines()[0] if str(err) else type(err).__name__})."
        ) from err
    rows, words = [], 0
    for row in stream:
        text = row.get("text")
        if isinstance(text, str) and text.strip():
            rows.append(text)
            words += len(text.split())
            if words >= tokens:
                break
    return rows


def _is_hub_id(source: Any) -> bool:
    """A string that names no shipped dataset and no local file: a ``datasets`` Hub id."""
    return (isinstance(source, str) and source not in SHIPPED_DATASETS and not Path(source).expanduser().exists()
            and not source.lower().endswith(TEXT_SUFFIXES) and not source.startswith((".", "/", "~")))


def pack(tokenizer: Any, rows: list[str], seqlen: int) -> torch.Tensor:
    """Documents tokenized one by one, joined with the end-of-text token, cut into consecutive windows."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for row in rows:
        ids.extend(tokenizer(row, add_special_tokens=False).input_ids)
        ids.extend(separator)
    count = len(ids) // seqlen
    return torch.tensor(ids[: count * seqlen], dtype=torch.long).reshape(count, seqlen)


def recovery_windows(tokenizer: Any, source: Any, seqlen: int, calibration: dict[str, Any] | None = None,
                     heldout: int = 0, dataset_config: str | None = None, split: str = "train",
                     tokens: int | None = None) -> RecoveryData:
    """Training windows from ``source``; with ``"c4"``, none from a document the pruning run used."""
    notices: list[str] = []
    excluded = 0
    if isinstance(source, str) and source == "c4":
        rows, excluded = _shipped_c4_rows(tokenizer, calibration, heldout, notices)
        label = SHIPPED_LABEL + (f", {excluded} calibration documents left out" if excluded else "")
    elif _is_hub_id(source):
        rows, label = _hub_rows(source, dataset_config, split, tokens or 10**6), source
    else:
        rows, label = [row for row in load_texts(source) if row.strip()], str(source)
    windows = pack(tokenizer, rows, seqlen)
    if windows.shape[0] == 0:
        raise CalibrationDataError(
            f"Recovery data {label} holds fewer than {seqlen} tokens after leaving out the calibration documents; "
            "lower seqlen or pass another dataset."
        )
    for notice in notices:
        logger.warning("Recovery data: %s", notice)
    return RecoveryData(windows, label, len(rows), excluded, notices)


class WindowDataset(torch.utils.data.Dataset):
    """The windows as Trainer examples (``input_ids`` only; the objectives build their own targets)."""

    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.windows[index]}
