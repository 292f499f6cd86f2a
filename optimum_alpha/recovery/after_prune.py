"""``AlphaPruner.recover``: recovery of the model a pruner has just pruned, teacher reloaded from its source."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .config import RecoveryConfig
from .report import RecoveryReport
from .run import check_not_quantised, recover_model


def teacher_from_source(source: Any) -> nn.Module:
    """The dense model again, loaded from where the pruner loaded it (the pruned copy is the student)."""
    if not isinstance(source, str) or not source:
        raise ConfigError("The dense teacher cannot be reloaded: the pruner was given a model object; pass "
                          "teacher= (a copy of the model taken before prune) or use objective='lm'.")
    from ..models import load_model

    return load_model(source)[0]


def recover_pruned(pruner: Any, config: RecoveryConfig | None = None, teacher: Any = None,
                   show_progress: bool = True) -> tuple[nn.Module, RecoveryReport]:
    """Recover ``pruner.model`` in place with ``pruner.metadata()`` as the pruning record."""
    config = config or RecoveryConfig()
    config.validate()
    if pruner.last_report is None:
        raise ConfigError("Nothing pruned yet: call prune(config) before recover(config).")
    check_not_quantised(pruner.model, pruner.metadata())  # before the teacher is reloaded (seconds to minutes)
    if teacher is None and config.needs_teacher:
        teacher = teacher_from_source(pruner.source)
    elif isinstance(teacher, str):
        teacher = teacher_from_source(teacher)
    model, report = recover_model(pruner.model, pruner.tokenizer, config, teacher=teacher,
                                  record=pruner.metadata(), show_progress=show_progress)
    pruner.model = model
    pruner.recovery_report = report
    return model, report
