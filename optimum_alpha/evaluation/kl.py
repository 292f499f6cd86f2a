"""KL divergence of a model's next-token distributions to a reference model's, on the perplexity windows.

What llama.cpp users compare quantised or pruned models by (``llama-perplexity --kl-divergence``): per token,
KL(P_reference || P_model) over the whole vocabulary, summarised as mean, median and 99th percentile, with the
rate at which both models put the same token first. It moves long before perplexity does at low sparsity.

Two ways to get the reference's distributions on the same windows:

* :func:`kl_divergence` runs both models window by window (both in memory: ``eval --reference``).
* :class:`DenseReference` keeps, before pruning, only each window's input to the output head (windows x
  seqlen x hidden values, e.g. 23.5 MB for 20 windows x 512 tokens of SmolLM2-135M instead of 2 GB of
  logits) and recomputes the dense logits after pruning with that head, which pruning never touches (it
  lives outside the blocks). The capture checks on its first window that the head reproduces the model's
  logits exactly; models that transform logits after the head (soft-capping) are refused in one line.

Sums are float64, so the numbers do not depend on how windows or tokens are chunked.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from .perplexity import evaluation_protocol, input_device, protocol_windows

# Tokens per float64 log-softmax: bounds the extra memory to 4 x CHUNK x vocab x 8 bytes (25 MB for SmolLM2).
CHUNK_TOKENS = 64


@dataclass
class KLResult:
    """Next-token agreement of a model with a reference on ``windows`` x ``seqlen`` tokens of ``dataset``."""

    dataset: str
    seqlen: int
    windows: int
    tokens: int  # positions compared: windows x (seqlen - 1), those with a next token
    kl_mean: float
    kl_median: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    perplexity: float
    reference_perplexity: float
    tokens_per_second: float  # of the evaluated model's forward passes on this machine

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """Two lines: what was compared, and the numbers."""
        return (f"KL divergence to the reference ({self.dataset}, {self.windows} windows x {self.seqlen} tokens): "
                f"mean {self.kl_mean:.6f}, median {self.kl_median:.6f}, p99 {self.kl_p99:.6f} nats/token\n"
                f"top-1 agreement {self.top1_agreement:.4f}, perplexity {self.perplexity:.3f} "
                f"(reference {self.reference_perplexity:.3f})")


class KLAccumulator:
    """float64 running sums of per-token KL, NLL of both models and top-1 agreement."""

    def __init__(self) -> None:
        self.kl_values: list[torch.Tensor] = []
        self.nll = 0.0
        self.reference_nll = 0.0
        self.agree = 0
        self.tokens = 0

    @torch.no_grad()
    def add(self, logits: torch.Tensor, reference_logits: torch.Tensor, targets: torch.Tensor) -> None:
        """One window: ``(T, V)`` logits of the model and of the reference for the positions predicting
        ``targets`` (T,)."""
        targets = targets.to(logits.device)
        reference_logits = reference_logits.to(logits.device)
        for start in range(0, targets.numel(), CHUNK_TOKENS):
            part = slice(start, start + CHUNK_TOKENS)
            log_q = F.log_softmax(logits[part].double(), dim=-1)
            log_p = F.log_softmax(reference_logits[part].double(), dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_(min=0.0)  # >= 0; clamp float64 rounding only
            self.kl_values.append(kl.cpu())
            picked = targets[part].unsqueeze(-1)
            self.nll -= float(log_q.gather(-1, picked).sum())
            self.reference_nll -= float(log_p.gather(-1, picked).sum())
            self.agree += int((log_q.argmax(-1) == log_p.argmax(-1)).sum())
            self.tokens += int(picked.numel())

    def result(self, protocol: dict[str, Any], seconds: float) -> KLResult:
        values = torch.cat(self.kl_values)
        return KLResult(
            dataset=protocol["dataset"], seqlen=protocol["seqlen"], windows=protocol["windows"], tokens=self.tokens,
            kl_mean=float(values.mean()), kl_median=float(values.median()),
            kl_p99=float(torch.quantile(values, 0.99)), kl_max=float(values.max()),
            top1_agreement=self.agree / self.tokens,
            perplexity=math.exp(self.nll / self.tokens), reference_perplexity=math.exp(self.reference_nll / self.tokens),
            tokens_per_second=protocol["windows"] * protocol["seqlen"] / seconds if seconds > 0 else float("nan"),
        )


def vocabulary_size(model: nn.Module) -> int:
    """Width of the model's logits: rows of its output embeddings (the config's ``vocab_size`` otherwise)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.ndim == 2 and weight.device.type != "meta":
        return int(weight.shape[0])
    return int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)


def check_same_vocabulary(model: nn.Module, reference: nn.Module) -> None:
    """KL compares distributions over the same tokens: refuse references with another vocabulary."""
    ours, theirs = vocabulary_size(model), vocabulary_size(reference)
    if ours != theirs:
        raise ConfigError(
            f"the reference predicts {theirs} tokens and the model {ours}: KL divergence needs the same vocabulary; "
            "pass the dense model the pruned one came from as the reference"
        )


def _logits(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    """(seqlen - 1, V) logits of one window's positions that have a next token."""
    return model(window.unsqueeze(0).to(input_device(model)), use_cache=False).logits[0, :-1]


@torch.no_grad()
def kl_divergence(model: nn.Module, reference: nn.Module, tokenizer: Any, dataset: Any = "wikitext2",
                  seqlen: int | None = None, max_windows: int | None = None,
                  show_progress: bool = False) -> KLResult:
    """KL(reference || model) per token, top-1 agreement and both perplexities, in one pass over the
    perplexity protocol's windows (:func:`optimum_alpha.evaluate.evaluation_protocol`). Both models must
    share ``tokenizer``'s vocabulary."""
    check_same_vocabulary(model, reference)
    rows, protocol = protocol_windows(model, tokenizer, dataset, seqlen, max_windows)
    evaluation_protocol(reference, tokenizer, dataset, protocol["seqlen"], max_windows)  # fits its positions too
    modes = (model.training, reference.training)
    model.eval()
    reference.eval()
    accumulator, seconds = KLAccumulator(), 0.0
    try:
        for row in tqdm(rows, desc="KL divergence", unit="window", disable=not show_progress):
            reference_logits = _logits(reference, row)
            start = time.perf_counter()
            logits = _logits(model, row)
            seconds += time.perf_counter() - start
            accumulator.add(logits, reference_logits, row[1:])
    finally:
        model.train(modes[0])
        reference.train(modes[1])
    return accumulator.result(protocol, seconds)


class DenseReference:
    """The dense model's side of the KL comparison, taken before pruning (see the module docstring)."""

    def __init__(self, rows: torch.Tensor, protocol: dict[str, Any], head_inputs: list[torch.Tensor],
                 perplexity: float) -> None:
        self.rows = rows
        self.protocol = protocol
        self.head_inputs = head_inputs
        self.perplexity = perplexity

    @property
    def nbytes(self) -> int:
        """Memory the kept head inputs take."""
        return sum(t.numel() * t.element_size() for t in self.head_inputs)

    @classmethod
    @torch.no_grad()
    def capture(cls, model: nn.Module, tokenizer: Any, dataset: Any = "wikitext2", seqlen: int | None = None,
                max_windows: int | None = None, show_progress: bool = False) -> "DenseReference":
        """One dense pass: the perplexity and, per window, the output head's input (kept on the CPU)."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None:
            raise ConfigError(
                f"{type(model).__name__} has no output embeddings to recompute the dense logits with; measure KL "
                "with `eval --reference` (both models in memory) instead"
            )
        rows, protocol = protocol_windows(model, tokenizer, dataset, seqlen, max_windows)
        captured: list[torch.Tensor] = []

        def keep(_module: nn.Module, args: tuple, _output: Any) -> None:
            captured.append(args[0][0, :-1].detach().cpu())  # positions that have a next token

        hook = head.register_forward_hook(keep)
        was_training = model.training
        model.eval()
        nll, tokens = 0.0, 0
        try:
            for index, row in enumerate(tqdm(rows, desc="Perplexity", unit="window", disable=not show_progress)):
                logits = _logits(model, row)
                if index == 0:
                    hook.remove()  # the check runs the head once more
                    cls._check_head(head, captured[0], logits)
                    hook = head.register_forward_hook(keep)
                log_p = F.log_softmax(logits.double(), dim=-1)
                nll -= float(log_p.gather(-1, row[1:].to(logits.device).unsqueeze(-1)).sum())
                tokens += row.numel() - 1
        finally:
            hook.remove()
            model.train(was_training)
        return cls(rows, protocol, captured, math.exp(nll / tokens))

    @staticmethod
    def _check_head(head: nn.Module, head_input: torch.Tensor, logits: torch.Tensor) -> None:
        again = head(head_input.unsqueeze(0).to(logits.device))[0]
        if again.shape != logits.shape or not torch.allclose(again.float(), logits.float(), rtol=1e-5, atol=1e-5):
            raise ConfigError(
                "this model changes its logits after the output head (e.g. soft-capping), so the dense logits "
                "cannot be recomputed after pruning; measure KL with `eval PRUNED --reference DENSE` instead"
            )

    @torch.no_grad()
    def compare(self, model: nn.Module, show_progress: bool = False) -> KLResult:
        """KL of ``model`` (the same model after pruning) to the captured dense model, on the same windows."""
        head = model.get_output_embeddings()
        was_training = model.training
        model.eval()
        accumulator, seconds = KLAccumulator(), 0.0
        try:
            for row, head_input in tqdm(list(zip(self.rows, self.head_inputs)), desc="KL divergence",
                                        unit="window", disable=not show_progress):
                start = time.perf_counter()
                logits = _logits(model, row)
                seconds += time.perf_counter() - start
                reference_logits = head(head_input.unsqueeze(0).to(logits.device))[0]
                accumulator.add(logits, reference_logits, row[1:])
        finally:
            model.train(was_training)
        return accumulator.result(self.protocol, seconds)
