"""Evaluation of a dense or pruned causal LM: the one import users need.

* :func:`perplexity`: WikiText-2 perplexity by the pruning literature's protocol (:mod:`.evaluation.perplexity`).
* :func:`kl_divergence`: per-token KL divergence of the next-token distribution to a reference model, top-1
  agreement and both perplexities, in one pass over the same windows (:mod:`.evaluation.kl`).
* :func:`zero_shot`: zero-shot accuracy through upstream lm-evaluation-harness, in-process, with registry task
  names or local task files (:mod:`.evaluation.zero_shot`; needs ``pip install 'optimum-alpha[eval]'``).
"""

from __future__ import annotations

from .evaluation.kl import KLResult, kl_divergence
from .evaluation.perplexity import (
    evaluation_protocol,
    evaluation_tokens,
    input_device,
    max_positions,
    perplexity,
    window_perplexity,
)
from .evaluation.zero_shot import PAPER_TASKS, ZeroShotResult, zero_shot

__all__ = [
    "KLResult",
    "PAPER_TASKS",
    "ZeroShotResult",
    "evaluation_protocol",
    "evaluation_tokens",
    "input_device",
    "kl_divergence",
    "max_positions",
    "perplexity",
    "window_perplexity",
    "zero_shot",
]
