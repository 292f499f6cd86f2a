"""Perplexity by the pruning literature's protocol (Wanda, SparseGPT, OWL, AlphaPruning).

The evaluation rows are joined with "\\n\\n", tokenized once, cut into non-overlapping windows of ``seqlen``
tokens (the remainder is dropped), and the result is exp(mean token NLL) over all windows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import evaluation_tokens
from ..errors import CalibrationDataError, ConfigError
from ..model_utils import max_positions
from ..options import resolve_seqlen


def input_device(model: Any) -> torch.device:
    """Device of the input embeddings (the execution device when they are offloaded)."""
    weight = model.get_input_embeddings().weight
    if weight.device.type == "meta":
        hook = getattr(model.get_input_embeddings(), "_hf_hook", None)
        return torch.device(getattr(hook, "execution_device", "cpu") or "cpu")
    return weight.device


_LAST_TOKENS: dict[tuple[int, str], torch.Tensor] = {}


def _tokens(tokenizer: Any, dataset: Any) -> torch.Tensor:
    """The evaluation token stream, kept for the last (tokenizer, named dataset): the CLI asks for the protocol
    and then the perplexity, before and after pruning, and WikiText-2 takes seconds to tokenize."""
    if not isinstance(dataset, str):
        return evaluation_tokens(tokenizer, dataset)
    key = (id(tokenizer), dataset)
    if key not in _LAST_TOKENS:
        _LAST_TOKENS.clear()
        _LAST_TOKENS[key] = evaluation_tokens(tokenizer, dataset)
    return _LAST_TOKENS[key]


def _windows(model: Any, tokenizer: Any, dataset: Any, seqlen: int | None,
             max_windows: int | None) -> tuple[torch.Tensor, int, int]:
    """(token stream, window length, window count) of the protocol; every argument error is raised here."""
    if tokenizer is None:
        raise CalibrationDataError(
            "Perplexity needs a tokenizer, but this model has none; pass tokenizer= or load a model folder "
            "that contains one."
        )
    seqlen = resolve_seqlen(seqlen, max_positions(model))
    ids = _tokens(tokenizer, dataset)
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, int(max_windows))
    if windows < 1:
        raise ConfigError(f"The evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}.")
    return ids, int(seqlen), int(windows)


def evaluation_protocol(model: Any, tokenizer: Any, dataset: Any = "wikitext2", seqlen: int | None = None,
                        max_windows: int | None = None) -> dict[str, Any]:
    """``{"dataset", "seqlen", "windows"}`` that :func:`perplexity` will use: what a reported number means.
    Raises the same errors as :func:`perplexity`, before any forward pass."""
    return protocol_windows(model, tokenizer, dataset, seqlen, max_windows)[1]


def protocol_windows(model: Any, tokenizer: Any, dataset: Any = "wikitext2", seqlen: int | None = None,
                     max_windows: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The (windows, seqlen) token rows :func:`perplexity` evaluates, and their :func:`evaluation_protocol`:
    every other evaluator (KL divergence) reads exactly the same windows."""
    ids, seqlen, windows = _windows(model, tokenizer, dataset, seqlen, max_windows)
    name = dataset if isinstance(dataset, str) else f"<{type(dataset).__name__}>"
    rows = ids[: windows * seqlen].reshape(windows, seqlen)
    return rows, {"dataset": name, "seqlen": seqlen, "windows": windows}


@torch.no_grad()
def perplexity(
    model: Any,
    tokenizer: Any,
    dataset: Any = "wikitext2",
    seqlen: int | None = None,
    max_windows: int | None = None,
    show_progress: bool = True,
) -> float:
    """WikiText-2 (or any text source) perplexity of a causal LM.

    ``seqlen`` defaults to min(2048, the model's max positions); ``max_windows`` evaluates only the first
    windows (state it when reporting numbers: :func:`evaluation_protocol` gives the exact protocol).
    """
    ids, seqlen, windows = _windows(model, tokenizer, dataset, seqlen, max_windows)
    return window_perplexity(model, ids[: windows * seqlen].reshape(windows, seqlen), show_progress)


@torch.no_grad()
def window_perplexity(model: Any, windows: torch.Tensor, show_progress: bool = False) -> float:
    """exp(mean token NLL) of a causal LM over the rows of a (windows, seqlen) LongTensor, one at a time."""
    device = input_device(model)
    was_training = model.training
    model.eval()
    total_nll = 0.0
    for row in tqdm(windows, desc="Perplexity", unit="window", disable=not show_progress):
        window = row.unsqueeze(0).to(device)
        logits = model(window, use_cache=False).logits.float()
        loss = F.cross_entropy(logits[0, :-1], window[0, 1:].to(logits.device))
        total_nll += float(loss)
    model.train(was_training)
    return math.exp(total_nll / windows.shape[0])
