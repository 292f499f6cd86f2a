"""Checks of a local checkpoint folder before transformers reads it: one clear error instead of a raw one.

transformers follows whatever ``model.safetensors.index.json`` names (``../../x.safetensors`` or an
absolute path included), keeps a layer's random initialisation when its tensors are missing (it only
logs ``MISSING``) and reports a corrupt file as a library error. :func:`check_checkpoint_folder` reads
only JSON files and safetensors headers (no weight data), so it costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .sparse_files import INDEX_FILE, SINGLE_FILE
_RESAVE = "save it again with optimum_alpha.save_pruned (or re-download it)"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{what} {path} cannot be read as JSON ({error}); {_RESAVE}") from error


def check_alpha_sparse_config(config: Any) -> list[str]:
    """Validate an ``alpha_sparse`` ``quantization_config``; returns its ``compressed_modules``."""
    from .formats import SPARSE_FORMAT as FORMAT

    if not isinstance(config, dict):
        raise CheckpointError(f"quantization_config must be a JSON object, got {type(config).__name__}; {_RESAVE}")
    modules = config.get("compressed_modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise CheckpointError(
            f"quantization_config.compressed_modules must be a list of module names, got {modules!r:.200}; {_RESAVE}"
        )
    sentinel = config.get("sentinel")
    if sentinel is not None and not isinstance(sentinel, str):
        raise CheckpointError(f"quantization_config.sentinel must be a weight name or null, got {sentinel!r}")
    if config.get("format", FORMAT) != FORMAT:
        raise CheckpointError(
            f"quantization_config.format {config.get('format')!r} is not {FORMAT!r}; this optimum-alpha cannot "
            "read it (upgrade optimum-alpha or re-save the checkpoint)"
        )
    return modules


def _inside(folder: Path, name: Any) -> Path:
    """The shard ``name`` of the index as a path inside ``folder``; refuses anything that leaves it."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise CheckpointError(
            f"{folder / INDEX_FILE} points at {name!r}, outside the checkpoint folder; refusing to read it. "
            "Use only checkpoints from sources you trust"
        )
    path = (folder / name).resolve()
    if folder.resolve() not in path.parents:
        raise CheckpointError(f"{folder / INDEX_FILE} entry {name!r} resolves outside the folder (a link?); refusing")
    if not path.is_file():
        raise CheckpointError(f"{folder / INDEX_FILE} names {name!r}, which is missing from the folder; {_RESAVE}")
    return path


def _weight_files(folder: Path) -> list[Path]:
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    if not (folder / INDEX_FILE).is_file():
        return []
    index = _read_json(folder / INDEX_FILE, "index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(k, str) for k in weight_map):
        raise CheckpointError(f"{folder / INDEX_FILE} has no valid 'weight_map' (tensor name -> file); {_RESAVE}")
    return sorted({_inside(folder, name) for name in weight_map.values()})


def _tensor_names(path: Path) -> set[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is truncated or not a safetensors file ({error}); {_RESAVE}") from error


def stored_tensor_names(folder: Path) -> set[str]:
    """Every tensor name in the folder's safetensors files (headers only)."""
    names: set[str] = set()
    for path in _weight_files(folder):
        names |= _tensor_names(path)
    return names


def check_checkpoint_folder(folder: Path) -> None:
    """Refuse a local model folder whose config, index, weight files or sparse layout is broken."""
    config = _read_json(folder / "config.json", "config")
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(
            f"{folder / 'config.json'} has no 'model_type', so no model class can be chosen; point at a folder "
            "written by save_pretrained"
        )
    quantization = config.get("quantization_config")
    if quantization is not None and (
        not isinstance(quantization, dict) or not isinstance(quantization.get("quant_method"), str)
    ):
        raise CheckpointError(
            f"{folder / 'config.json'} has a malformed quantization_config (an object with a 'quant_method' "
            f"is needed, got {quantization!r:.200}); {_RESAVE}"
        )
    names = stored_tensor_names(folder)
    from .load_check import written_by_us
    from .writers import get_writer, writer_for_quant_method, writer_names

    writer = writer_for_quant_method(quantization["quant_method"] if quantization is not None else None)
    if writer is not None:
        writer.verify(folder, quantization, names)
    # A folder of ours names its format in alpha_pruning.json; that writer verifies it (the dense format has
    # no quantization_config to find it by).
    recorded = (written_by_us(folder) or {}).get("format")
    if recorded in writer_names() and (writer is None or writer.name != recorded):
        get_writer(recorded).verify(folder, quantization or {}, names)
