"""Recovery after pruning: distillation or next-token fine-tuning (full or LoRA) that keeps every pruned zero.

``recover(folder_or_model, teacher=..., config=RecoveryConfig(...))`` for a saved checkpoint,
``AlphaPruner.recover(config)`` right after ``prune``; see docs/recovery.md.
"""

from .config import RecoveryConfig
from .entry import recover
from .report import RecoveryReport
from .run import RecoveryInterrupted, recover_model

__all__ = ["RecoveryConfig", "RecoveryInterrupted", "RecoveryReport", "recover", "recover_model"]
