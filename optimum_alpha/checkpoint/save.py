"""``save_pruned``: one call writes a complete, loadable Hugging Face model folder.

Everything is written into a temporary folder beside the target and swapped in at the end, so a
failure (disk full, interrupted run, bad metadata) never leaves a half-written or half-overwritten
folder behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import CheckpointError
from ..structured.checkpoint import add_width_quantization_config
from .model_card import build_model_card
from .sparse_files import compress_folder, write_quantization_config

FORMATS = ("dense", "sparse")
METADATA_FILE = "alpha_pruning.json"
CHART_FILE = "alpha_profile.png"


def library_version() -> str:
    """The installed optimum-alpha version (``unknown`` when running from an uninstalled tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optimum-alpha")
    except PackageNotFoundError:
        return "unknown"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_save_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder unless ``overwrite`` (nothing is written)."""
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"save target {target} is a file; pass a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise CheckpointError(
            f"save target {target} already exists and is not empty; pass overwrite=True (CLI: --overwrite) "
            "or choose another folder"
        )


def _replace_folder(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing ``target`` is restored if the swap fails."""
    if not target.exists():
        os.replace(staging, target)
        return
    backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def _without_gguf_state(model: nn.Module) -> Iterator[None]:
    """Hide the GGUF loader state while saving: the weights are already dequantized floats.

    transformers refuses to ``save_pretrained`` a model it loaded from GGUF and would otherwise write
    a ``gguf`` quantization config that no safetensors loader accepts.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)) != "gguf":
        yield
        return
    model_keys = ("hf_quantizer", "is_quantized", "quantization_method")
    config_keys = ("quantization_config", "_is_quantized")
    config = model.config
    saved_model = {key: getattr(model, key) for key in model_keys if hasattr(model, key)}
    saved_config = {key: getattr(config, key) for key in config_keys if hasattr(config, key)}
    for key in saved_model:
        if key == "is_quantized":
            model.is_quantized = False
        else:
            delattr(model, key)
    for key in saved_config:
        delattr(config, key)
    try:
        yield
    finally:
        for key, value in saved_model.items():
            setattr(model, key, value)
        for key, value in saved_config.items():
            setattr(config, key, value)


def _zero_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Matrix name -> (zeros, numel) for every prunable matrix inside the blocks (expert slices included)."""
    from ..errors import ModelStructureError
    from ..matrices import model_weights

    try:
        _, blocks = model_weights(model)
    except ModelStructureError:
        return {}
    counts = {}
    for block in blocks:
        for matrix in block.matrices:
            weight = matrix.read()
            counts[matrix.name] = (matrix.numel - int(torch.count_nonzero(weight)), matrix.numel)
    return counts


def layer_sparsities(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each prunable weight, keyed by module name."""
    return {name: zeros / max(numel, 1) for name, (zeros, numel) in _zero_counts(model).items()}


def _complete_metadata(model: nn.Module, metadata: dict[str, Any] | None, fmt: str) -> dict[str, Any]:
    data = json.loads(json.dumps(metadata)) if metadata else {}  # a deep copy we may extend
    counts = _zero_counts(model)
    if not data.get("layers"):
        data["layers"] = {name: zeros / max(numel, 1) for name, (zeros, numel) in counts.items()}
    if "achieved_sparsity" not in data:
        total = sum(numel for _, numel in counts.values())
        data["achieved_sparsity"] = sum(zeros for zeros, _ in counts.values()) / total if total else 0.0
    if data.get("base_model") is None:
        data["base_model"] = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    data["library_version"] = library_version()
    data["format"] = fmt
    return data


def _write_chart(folder: Path, data: dict[str, Any]) -> str | None:
    blocks = data.get("blocks") or []
    scores = [b.get("score") for b in blocks]
    if not blocks or any(not isinstance(s, (int, float)) for s in scores):
        return None
    from ..plotting import plot_block_profile

    sparsities = [b.get("achieved_sparsity", b.get("target_sparsity")) for b in blocks]
    if any(not isinstance(s, (int, float)) for s in sparsities):
        sparsities = None
    metric = str(data.get("metric") or "alpha_hill")
    plot_block_profile(scores, sparsities, folder / CHART_FILE, metric_name=metric)
    return CHART_FILE


def _write_folder(
    model: nn.Module,
    folder: Path,
    *,
    tokenizer: Any,
    fmt: str,
    max_shard_size: str | int,
    metadata: dict | None,
) -> None:
    """Write every file of the checkpoint into ``folder`` (the staging folder)."""
    data = _complete_metadata(model, metadata, fmt)
    with _without_gguf_state(model):
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    if fmt == "sparse":
        compressed = compress_folder(folder)
        if compressed:
            sparsity = data.get("achieved_sparsity")
            write_quantization_config(folder, compressed, sparsity, data["library_version"])
        data["compressed_modules"] = len(compressed)
    card_format = "width" if add_width_quantization_config(folder, data["library_version"]) else fmt
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / METADATA_FILE).write_text(json.dumps(data, indent=2) + "\n")
    chart = _write_chart(folder, data)
    build_model_card(data, fmt=card_format, chart_file=chart).save(folder / "README.md")


def save_pruned(
    model: nn.Module,
    save_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    format: str = "sparse",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    metadata: dict | None = None,
) -> Path:
    """Save a pruned model as a Hugging Face folder (``dense`` zeros-in-place or ``sparse`` bitmask).

    Also writes the tokenizer, ``alpha_pruning.json``, a block-profile chart and a model card.
    Returns the folder path.
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; choose one of {', '.join(FORMATS)}")
    if not hasattr(model, "save_pretrained"):
        raise CheckpointError(
            f"{type(model).__name__} has no save_pretrained; pass a transformers PreTrainedModel"
        )
    if metadata is not None:
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"metadata must be JSON-serialisable ({error}); convert tensors to floats"
            ) from error
    target = Path(save_dir).expanduser().resolve()
    check_save_target(target, overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        staging.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private; the result should not be
    except OSError as error:
        raise CheckpointError(f"cannot write next to {target} ({error}); choose a writable folder") from error
    try:
        _write_folder(
            model, staging, tokenizer=tokenizer, fmt=format, max_shard_size=max_shard_size, metadata=metadata
        )
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
