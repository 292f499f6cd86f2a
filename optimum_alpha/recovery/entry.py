"""``recover``: a saved pruned folder (or a pruned model) in, a recovered checkpoint in the same format out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError
from .config import RecoveryConfig
from .report import RecoveryReport
from .run import recover_model

# Keys of alpha_pruning.json that save_pruned writes itself (from the recovered weights) on every save.
_REWRITTEN = ("files", "format", "library_version", "compressed_modules", "layers", "achieved_sparsity")


def read_record(folder: Path) -> dict[str, Any]:
    """The pruning run's ``alpha_pruning.json`` (empty for a folder that has none)."""
    from ..checkpoint.target import METADATA_FILE

    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({err}); save the pruned model again.") from err


def recovered_metadata(record: dict[str, Any], report: RecoveryReport) -> dict[str, Any]:
    """The pruning record with the recovery added; sparsities are measured again by the save."""
    data = {key: value for key, value in record.items() if key not in _REWRITTEN}
    data["recovery"] = report.to_dict()
    return data


def _load_teacher(teacher: Any, **load_kwargs: Any) -> nn.Module | None:
    if teacher is None or isinstance(teacher, nn.Module):
        return teacher
    from ..models import load_model

    return load_model(teacher, **load_kwargs)[0]


def recover(folder_or_model: Any, teacher: Any = None, config: RecoveryConfig | None = None, *,
            tokenizer: Any = None, output: str | Path | None = None, format: str | None = None,
            overwrite: bool | str = False, record: dict[str, Any] | None = None, show_progress: bool = True,
            callbacks: list[Any] | None = None, **load_kwargs: Any) -> tuple[nn.Module, RecoveryReport]:
    """Recover a pruned model and, with ``output``, save it as the pruning saved it (``sparse`` or ``dense``).

    ``folder_or_model``: a folder written by ``save_pruned`` / ``alpha-prune prune`` (its ``alpha_pruning.json``
    says which calibration documents to leave out of the data), or a pruned model (then pass ``tokenizer``
    and, if you have it, ``record=AlphaPruner.metadata()``). ``teacher``: the dense model before pruning, a
    model or anything ``AlphaPruner.from_pretrained`` loads (``"smollm2-135m"``); needed unless
    ``objective="lm"``. ``load_kwargs`` go to ``from_pretrained`` for the student and the teacher.
    """
    config = config or RecoveryConfig()
    config.validate()
    folder = None
    if not isinstance(folder_or_model, nn.Module):
        folder = Path(folder_or_model).expanduser()
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder} is not a saved model folder (no config.json); pass the folder "
                                  "alpha-prune prune wrote.")
        record = read_record(folder) if record is None else record
    record = record or {}
    fmt = format or record.get("format") or "sparse"
    if output is not None:
        from ..checkpoint.save import check_save_request

        check_save_request(output, format=fmt, overwrite=overwrite)  # refused before hours of training
    if folder is not None:
        from ..checkpoint import load_pruned
        from ..models import load_tokenizer

        model = load_pruned(folder, **load_kwargs)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(str(folder), required=True)
    else:
        model = folder_or_model
    teacher_model = _load_teacher(teacher, **load_kwargs)
    model, report = recover_model(model, tokenizer, config, teacher=teacher_model, record=record, output=output,
                                  show_progress=show_progress, callbacks=callbacks)
    if output is not None:
        from ..checkpoint import save_pruned

        save_pruned(model, output, tokenizer=tokenizer, format=fmt, overwrite=overwrite,
                    metadata=recovered_metadata(record, report))
    return model, report
