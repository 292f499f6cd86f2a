"""Write the ``alpha_sparse`` layout through ``save_pretrained``: each shard is compressed as it is written.

Going through transformers' own ``save_pretrained`` keeps everything it does when it saves: tied-weight
de-duplication, key renaming, sharding and the index file. While :func:`compress_while_saving` is
active, every shard that ``save_pretrained`` writes into the staging folder has its pruned Linear
weights replaced by their bitmask tensors in memory before the file is written, so the disk never
holds a dense copy (the save needs the final folder's space only). Shards written some other way are
rewritten in place afterwards by :func:`compress_folder`, one shard in memory at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from . import bitmask
from .quantizer import FORMAT, QUANT_METHOD, SENTINEL_MESSAGE

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _shards(folder: Path) -> tuple[list[Path], dict | None]:
    """Shard files of a saved folder and the parsed index (None when unsharded)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        names = sorted(set(index["weight_map"].values()))
        return [folder / name for name in names], index
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE], None
    raise CheckpointError(
        f"no safetensors weights found in {folder}; the model's save_pretrained did not write safetensors, "
        "so it cannot be saved in the sparse format (use format='dense')"
    )


def _sentinel_tensor() -> torch.Tensor:
    """uint8 bytes of :data:`SENTINEL_MESSAGE`: the wrong shape for any weight, readable in a hex dump."""
    return torch.tensor(list(SENTINEL_MESSAGE.encode("ascii")), dtype=torch.uint8)


class ShardCompressor:
    """Replaces the candidate weights of each shard by their bitmask tensors; remembers what it wrote."""

    def __init__(self, candidates: Iterable[str]) -> None:
        self.wanted = set(candidates)
        self.compressed: list[str] = []  # module prefixes, in file order
        self.written: dict[str, list[str]] = {}  # shard file name -> the keys it holds
        self.nbytes: dict[str, int] = {}  # shard file name -> bytes of its tensors

    def compress(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of one shard with every candidate that shrinks stored as a bitmask.

        The first compressed module also keeps a marker under its dense key (see
        :class:`~optimum_alpha.checkpoint.quantizer.AlphaSparseConfig`).
        """
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            mask = bitmask.kept_mask(value) if key in self.wanted and value.dim() == 2 else None
            if mask is not None and bitmask.worth_compressing(value, mask):
                prefix = bitmask.module_prefix(key)
                for suffix, part in bitmask.compress(value, mask).items():
                    out[f"{prefix}.{suffix}"] = part
                if not self.compressed:
                    out[key] = _sentinel_tensor()
                self.compressed.append(prefix)
            else:
                out[key] = value
        return out


_ACTIVE: dict[Path, ShardCompressor] = {}
_ACTIVE_LOCK = threading.Lock()
_ORIGINAL_WRITER: list[Any] = []


def _dispatching_writer(original: Any) -> Any:
    def write(tensors: dict[str, torch.Tensor], filename: str, *args: Any, **kwargs: Any) -> Any:
        path = Path(filename)
        compressor = _ACTIVE.get(path.parent)
        if compressor is not None:
            tensors = compressor.compress(tensors)
            compressor.written[path.name] = list(tensors)
            compressor.nbytes[path.name] = sum(t.numel() * t.element_size() for t in tensors.values())
        return original(tensors, filename, *args, **kwargs)

    return write


@contextlib.contextmanager
def compress_while_saving(folder: Path, candidates: Iterable[str]) -> Iterator[ShardCompressor]:
    """While active, shards that ``save_pretrained`` writes into ``folder`` are compressed before writing.

    Hooks the one function transformers writes shards with (``modeling_utils.safe_save_file``); other
    folders pass through untouched, and nested or concurrent saves share one hook.
    """
    from transformers import modeling_utils

    compressor = ShardCompressor(candidates)
    with _ACTIVE_LOCK:
        if not _ACTIVE:
            _ORIGINAL_WRITER.append(modeling_utils.safe_save_file)
            modeling_utils.safe_save_file = _dispatching_writer(modeling_utils.safe_save_file)
        _ACTIVE[folder] = compressor
    try:
        yield compressor
    finally:
        with _ACTIVE_LOCK:
            del _ACTIVE[folder]
            if not _ACTIVE:
                modeling_utils.safe_save_file = _ORIGINAL_WRITER.pop()


def compress_folder(folder: Path, compressor: ShardCompressor) -> list[str]:
    """Compress the shards of ``folder`` the hook did not see, then make the index match the files.

    Returns the compressed module prefixes in file order.
    """
    shard_paths, index = _shards(folder)
    new_weight_map: dict[str, str] = {}
    total_size = 0
    for shard in shard_paths:
        if shard.name in compressor.written:
            new_weight_map.update({key: shard.name for key in compressor.written[shard.name]})
            total_size += compressor.nbytes[shard.name]
            continue
        with safe_open(str(shard), framework="pt") as handle:
            file_metadata = handle.metadata()
            tensors = compressor.compress({key: handle.get_tensor(key) for key in handle.keys()})
        # Write beside and swap, so tensors still backed by the old file stay valid until replaced.
        partial = shard.with_name(shard.name + ".partial")
        save_file(tensors, str(partial), metadata=file_metadata)
        os.replace(partial, shard)
        new_weight_map.update({key: shard.name for key in tensors})
        total_size += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if index is not None:
        index["metadata"] = {**index.get("metadata", {}), "total_size": total_size}
        index["weight_map"] = dict(sorted(new_weight_map.items()))
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return compressor.compressed


def write_quantization_config(
    folder: Path, compressed: list[str], global_sparsity: float | None, version: str
) -> None:
    """Add the ``alpha_sparse`` ``quantization_config`` block to ``config.json``."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "sparsity_structure": "unstructured",
        "global_sparsity": global_sparsity,
        "compressed_modules": compressed,
        "sentinel": f"{compressed[0]}.weight" if compressed else None,
        "version": version,
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
