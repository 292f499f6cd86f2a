"""``load_pruned``: load a folder or Hub repo written by :func:`save_pruned`, in either format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .quantizer import register
from .verify import check_checkpoint_folder


def _looks_local(path_or_id: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything path-like is meant as a local folder."""
    return path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1


def load_pruned(path_or_id: str | os.PathLike, **from_pretrained_kwargs: Any):
    """Return the pruned model with its weights exactly as saved (``device_map`` etc. pass through).

    A thin wrapper over ``AutoModelForCausalLM.from_pretrained`` that makes sure the ``alpha_sparse``
    loader is registered and checks a local folder first (see :mod:`.verify`): a missing folder, a broken
    config, index or weight file, or an index entry outside the folder is a clear :class:`CheckpointError`.
    """
    from transformers import AutoModelForCausalLM

    register()
    location = str(path_or_id)
    local = Path(location).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise CheckpointError(
                f"{local} has no config.json; point load_pruned at a folder written by save_pruned"
            )
        check_checkpoint_folder(local)
        location = str(local)
    elif isinstance(path_or_id, os.PathLike) or _looks_local(location):
        raise CheckpointError(
            f"checkpoint folder {local} does not exist; check the path (or pass a Hub repo id)"
        )
    return AutoModelForCausalLM.from_pretrained(location, **from_pretrained_kwargs)
