"""Recovery objectives: distillation from the dense teacher, next-token loss, and per-block hidden states.

Every term is a mean over the tokens of one micro-batch. All training windows have the same length, so the
Trainer's mean over gradient-accumulation micro-batches is the exact mean over the accumulated tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T² · KL(teacher ‖ student) of the softened next-token distributions, averaged over every position.

    Zero exactly when the logits are equal (the two log-softmaxes are then the same numbers)."""
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy (position t predicts token t + 1)."""
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), input_ids[:, 1:].reshape(-1))


def hidden_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of MSE(student, teacher) / mean(teacher²): block outputs compared on one scale,
    so a block with large activations does not outweigh the rest. Index 0 (the embeddings) is skipped."""
    terms = [F.mse_loss(s.float(), t.float()) / t.float().pow(2).mean().clamp_min(1e-12)
             for s, t in zip(student[1:], teacher[1:])]
    return torch.stack(terms).mean()
