"""Run an exported file in llama.cpp itself (through ``llama-cpp-python``, an optional dependency).

Used by the ``llama_cpp`` tests and ``benchmarks/gguf_export.py``: perplexity from llama.cpp's own logits on token
windows given as ids (so both engines see the same tokens), prompt-processing and decode speed the way
``llama-bench`` measures them (a prompt of N tokens in one batch; then N single-token steps on the KV cache),
and a greedy generation.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import AlphaPruningError

INSTALL_HINT = "pip install llama-cpp-python==0.3.36 (it builds llama.cpp from source: about 45 min on 2 busy cores)"


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def open_model(path: str | Path, *, n_ctx: int = 512, threads: int = 1, logits_all: bool = False,
               n_batch: int = 512) -> Iterator[object]:
    """A ``llama_cpp.Llama`` on ``path`` (CPU), closed afterwards."""
    try:
        from llama_cpp import Llama
    except ImportError as error:
        raise AlphaPruningError(f"running GGUF files needs llama-cpp-python: {INSTALL_HINT}") from error
    model = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                  n_threads_batch=threads, logits_all=logits_all, verbose=False, n_gpu_layers=0)
    try:
        yield model
    finally:
        model.close()


def log_softmax_nll(logits: np.ndarray, targets: Sequence[int]) -> float:
    """Σ −log p(target) over the rows, in float64."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    return float((log_z - rows[np.arange(len(targets)), targets]).sum())


def window_logits(llm, ids: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits for every position of one window (a fresh context each time)."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def perplexity(path: str | Path, windows: Sequence[Sequence[int]], threads: int = 1) -> float:
    """exp(mean NLL) of llama.cpp on ``windows`` of token ids (each scored from its second token on)."""
    length = max(len(w) for w in windows)
    total, count = 0.0, 0
    with open_model(path, n_ctx=length, threads=threads, logits_all=True, n_batch=length) as llm:
        for ids in windows:
            logits = window_logits(llm, ids)
            total += log_softmax_nll(logits[:-1], list(ids[1:]))
            count += len(ids) - 1
    return math.exp(total / count)


def speed(path: str | Path, tokens: Sequence[int], *, prompt: int = 512, generate: int = 128,
          threads: int = 1) -> tuple[float, float]:
    """(prompt processing tokens/s of ``prompt`` tokens in one batch, decode tokens/s of ``generate`` steps)."""
    if len(tokens) < prompt + generate:
        raise ValueError(f"need {prompt + generate} tokens, got {len(tokens)}")
    with open_model(path, n_ctx=prompt + generate, threads=threads, n_batch=prompt) as llm:
        llm.reset()
        llm.eval(list(tokens[:8]))  # warm-up: first-call allocations do not count
        llm.reset()
        start = time.perf_counter()
        llm.eval(list(tokens[:prompt]))
        prompt_s = time.perf_counter() - start
        llm.reset()
        start = time.perf_counter()
        for token in tokens[prompt:prompt + generate]:
            llm.eval([int(token)])
        decode_s = time.perf_counter() - start
    return prompt / prompt_s, generate / decode_s


def generate_text(path: str | Path, prompt: str, max_tokens: int = 24, threads: int = 1) -> str:
    """A greedy completion of ``prompt`` by llama.cpp, with the tokenizer of the file."""
    with open_model(path, n_ctx=256, threads=threads) as llm:
        result = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1)
    return result["choices"][0]["text"]
