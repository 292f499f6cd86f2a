"""``save_pruned``: one call writes a complete, loadable Hugging Face model folder.

Everything is written into a staging folder and put in place at the end (see :mod:`.target`), so a
failure (disk full, interrupted run, bad metadata) never leaves a half-written or half-overwritten
folder behind, and a concurrent save to the same folder cannot silently replace this one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import CheckpointError
from ..interrupts import hold_interrupts, sigterm_as_interrupt
from ..structured.checkpoint import add_width_quantization_config
from .model_card import build_model_card
from .writers import get_writer
from .target import (
    MANIFEST_KEY,
    METADATA_FILE,
    check_save_target,
    discard_staging,
    make_staging,
    overwrite_mode,
    put_in_place,
)

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


def check_shard_size(max_shard_size: str | int) -> int:
    """Bytes of ``max_shard_size`` (an int or a size such as ``"500MB"``/``"2GiB"``); refused before slow work."""
    from transformers.utils.hub import convert_file_size_to_int

    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (int, str)):
        raise CheckpointError(
            f"max_shard_size must be a number of bytes or a size such as '500MB', got {max_shard_size!r}"
        )
    try:
        size = convert_file_size_to_int(max_shard_size.strip() if isinstance(max_shard_size, str) else max_shard_size)
    except ValueError:
        size = 0
    if size <= 0:
        raise CheckpointError(
            f"invalid max_shard_size {max_shard_size!r}; use a positive size such as '500MB', '5GB' or '2GiB'"
        )
    return size


def check_save_request(
    save_dir: str | os.PathLike, *, format: str = "sparse", max_shard_size: str | int = "5GB",
    overwrite: bool | str = False, config: Any = None, model: nn.Module | None = None, **writer_options: Any
) -> Path:
    """Everything ``save_pruned`` would refuse, checked before slow work; returns the resolved target.
    With the run's ``config`` (and the loaded ``model``), also what the format cannot hold of that run."""
    # an unknown format fails here, listing the registered ones; so do options the format does not take
    writer = get_writer(format, **writer_options)
    writer.check_request()
    if config is not None:
        writer.check_config(config)
        if model is not None:
            writer.check_model(model, config)
    check_shard_size(max_shard_size)
    target = Path(save_dir).expanduser().resolve()
    check_save_target(target, overwrite_mode(overwrite))
    return target


def _apply_umask(folder: Path) -> None:
    """Give every file and folder written the modes the umask allows (some writers create 0600 files)."""
    umask = _current_umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


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


def public_name(value: str) -> str:
    """A local path as it may be published: its last component (``/home/me/data/c4.jsonl`` -> ``c4.jsonl``).

    Model ids, dataset names and other strings are returned as they are.
    """
    path = Path(value).expanduser()
    if value.startswith(("/", "~", ".", "\\")) or path.is_absolute() or (value and path.exists()):
        return path.name or "local"
    return value


def _without_local_paths(data: Any) -> Any:
    """``data`` with every string value that is a local path replaced by :func:`public_name`."""
    if isinstance(data, dict):
        return {key: _without_local_paths(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_without_local_paths(value) for value in data]
    return public_name(data) if isinstance(data, str) else data


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
    return _without_local_paths(data)  # published with the checkpoint (and pushed): no local paths


def _write_chart(folder: Path, data: dict[str, Any]) -> str | None:
    """Block score and sparsity by depth; with the spectra re-measured after pruning (``evaluation.spectra``),
    the metric before and after instead of the allocation's score."""
    blocks = data.get("blocks") or []
    spectra = (data.get("evaluation") or {}).get("spectra") or {}
    if spectra.get("before") and len(spectra["before"]) == len(blocks):
        scores, after, metric = spectra["before"], spectra.get("after"), str(spectra.get("metric"))
    else:
        scores, after = [b.get("score") for b in blocks], None
        metric = str(data.get("metric") or "alpha_hill")
    if not blocks or any(not isinstance(s, (int, float)) for s in scores):
        return None
    from ..plotting import plot_block_profile

    sparsities = [b.get("achieved_sparsity", b.get("target_sparsity")) for b in blocks]
    if any(not isinstance(s, (int, float)) for s in sparsities):
        sparsities = None
    plot_block_profile(scores, sparsities, folder / CHART_FILE, metric_name=metric, after_scores=after)
    return CHART_FILE


def _write_folder(
    model: nn.Module,
    folder: Path,
    *,
    tokenizer: Any,
    fmt: str,
    max_shard_size: str | int,
    metadata: dict | None,
    writer_options: dict[str, Any],
) -> None:
    """Write every file of the checkpoint into ``folder`` (the staging folder)."""
    data = _complete_metadata(model, metadata, fmt)
    writer = get_writer(fmt, **writer_options)
    writer.write(model, folder, max_shard_size=max_shard_size, data=data, tokenizer=tokenizer)
    card_format = "width" if add_width_quantization_config(folder, data["library_version"]) else fmt
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    chart = _write_chart(folder, data)
    build_model_card(data, fmt=card_format, chart_file=chart).save(folder / "README.md")
    # Written last: the manifest of every file of this save, so an overwrite deletes nothing else.
    data[MANIFEST_KEY] = sorted(os.listdir(folder)) + [METADATA_FILE]
    (folder / METADATA_FILE).write_text(json.dumps(data, indent=2) + "\n")
    _apply_umask(folder)


def check_written(staging: Path, target: Path) -> None:
    """Read the finished staging folder back as a load would check it (config, index, every safetensors header
    against its file size, the format's own verification): a filesystem that lost data without an error (a
    full disk on some network or FUSE filesystems) fails the save instead of reporting success."""
    from .verify import check_checkpoint_folder

    if not (staging / "config.json").is_file():  # not a transformers folder (GGUF: its file is written atomically)
        return
    try:
        check_checkpoint_folder(staging)
    except CheckpointError as error:
        raise CheckpointError(
            f"saving to {target} failed: the written files do not read back ({error}); nothing was changed there"
        ) from error


def save_pruned(
    model: nn.Module,
    save_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    format: str = "sparse",
    max_shard_size: str | int = "5GB",
    overwrite: bool | str = False,
    metadata: dict | None = None,
    **writer_options: Any,
) -> Path:
    """Save a pruned model as a Hugging Face folder in a registered format (``dense`` zeros-in-place,
    ``sparse`` bitmask, ``gguf`` for llama.cpp...; see :mod:`.writers`); ``writer_options`` are the
    format's own (``gguf_type=`` of ``gguf``).

    Also writes the tokenizer, ``alpha_pruning.json``, a block-profile chart and a model card.
    ``overwrite=True`` replaces a checkpoint written by optimum-alpha, ``"force"`` any folder; files
    the old checkpoint did not write are kept in both cases. Returns the folder path. Under torchrun only
    rank 0 writes; the other ranks wait for it, share its failure and get the path it was given.
    """
    from ..distributed import current as current_parallel

    kwargs = dict(tokenizer=tokenizer, format=format, max_shard_size=max_shard_size, overwrite=overwrite,
                  metadata=metadata, writer_options=writer_options)
    written = current_parallel().on_main(lambda: _save_here(model, save_dir, **kwargs), f"saving {save_dir}")
    return written if written is not None else Path(save_dir)


def _save_here(model: nn.Module, save_dir: str | os.PathLike, *, tokenizer: Any, format: str,
               max_shard_size: str | int, overwrite: bool | str, metadata: dict | None,
               writer_options: dict[str, Any]) -> Path:
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
    target = check_save_request(save_dir, format=format, max_shard_size=max_shard_size, overwrite=overwrite,
                                **writer_options)
    # what this format cannot hold of this model (quantised or not), before any file is written
    get_writer(format, **writer_options).check_request(model, metadata)
    with sigterm_as_interrupt():
        staging: Path | None = None
        try:
            with hold_interrupts():  # a signal between mkdir and the assignment would orphan the folder
                staging = make_staging(target)
            _write_folder(
                model, staging, tokenizer=tokenizer, fmt=format, max_shard_size=max_shard_size, metadata=metadata,
                writer_options=writer_options,
            )
            check_written(staging, target)
            put_in_place(staging, target, overwrite)
        except BaseException as error:
            if staging is not None:
                discard_staging(staging, target)
            if isinstance(error, (OSError, SafetensorError)):
                raise CheckpointError(f"saving to {target} failed: {error}; nothing was changed there") from error
            raise
    return target
