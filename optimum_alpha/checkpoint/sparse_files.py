"""Turn a dense safetensors folder written by ``save_pretrained`` into the ``alpha_sparse`` layout.

Working on the written shards (rather than on the model) keeps everything transformers does when it
saves: tied-weight de-duplication, key renaming, sharding and the index file. Each shard is rewritten
in place with its pruned Linear weights replaced by their bitmask tensors, one shard in memory at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from . import bitmask
from .quantizer import FORMAT, MARKER_KEY, QUANT_METHOD, SENTINEL_MESSAGE

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


def compress_folder(folder: Path, candidates: Iterable[str]) -> list[str]:
    """Rewrite the shards of ``folder`` so every candidate weight that shrinks is stored as a bitmask.

    ``candidates`` are checkpoint keys (``<module>.weight``) that may be compressed. Returns the
    compressed module prefixes in file order. The first one also keeps a marker under its dense key
    (see :class:`~optimum_alpha.checkpoint.quantizer.AlphaSparseConfig`).
    """
    wanted = set(candidates)
    shard_paths, index = _shards(folder)
    compressed: list[str] = []
    new_weight_map: dict[str, str] = {}
    total_size = 0
    for shard in shard_paths:
        with safe_open(str(shard), framework="pt") as handle:
            file_metadata = handle.metadata()
            tensors: dict[str, torch.Tensor] = {}
            for key in handle.keys():
                value = handle.get_tensor(key)
                mask = value != 0 if key in wanted and value.dim() == 2 else None
                if mask is not None and bitmask.worth_compressing(value, mask):
                    prefix = bitmask.module_prefix(key)
                    for suffix, part in bitmask.compress(value, mask).items():
                        tensors[f"{prefix}.{suffix}"] = part
                    if not compressed:
                        tensors[key] = _sentinel_tensor()
                        tensors[MARKER_KEY] = _sentinel_tensor()
                    compressed.append(prefix)
                else:
                    tensors[key] = value
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
    return compressed


def write_quantization_config(
    folder: Path, compressed: list[str], global_sparsity: float | None, version: str,
    structure: str = "unstructured",
) -> None:
    """Add the ``alpha_sparse`` ``quantization_config`` block to ``config.json``."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "sparsity_structure": structure,  # "unstructured", "2:4" or "mixed:8", as pruned
        "global_sparsity": global_sparsity,
        "compressed_modules": compressed,
        "sentinel": f"{compressed[0]}.weight" if compressed else None,
        "version": version,
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
