"""Turn a dense safetensors folder written by ``save_pretrained`` into the ``alpha_sparse`` layout.

Working on the written shards (rather than on the model) keeps everything transformers does when it
saves: tied-weight de-duplication, key renaming, sharding and the index file. Each shard is rewritten
in place with its pruned Linear weights replaced by their bitmask tensors, one shard in memory at a time.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

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


FUSED_PREFIX = "fused_"


def family(key: str) -> str:
    """``model.layers.3.mlp.experts.7.w1.weight`` -> ``model.layers.*.mlp.experts.*.w1.weight``.

    transformers merges per-expert checkpoint keys into one fused parameter on load, collecting each
    projection's experts as one list; every member of such a family must be stored the same way (all bitmask
    or all dense), or the merged order would be lost. Whole families are therefore compressed or not.
    """
    return re.sub(r"\.\d+\.", ".*.", key)


def stored_keys(key: str) -> dict[str, str]:
    """Checkpoint keys of the four bitmask parts of ``key``: ``<module>.<part>`` for a ``.weight``,
    ``<key>.fused_<part>`` for anything else (a 3-D fused expert parameter has no ``.weight`` to replace)."""
    if key.endswith(".weight"):
        prefix = bitmask.module_prefix(key)
        return {suffix: f"{prefix}.{suffix}" for suffix in bitmask.SUFFIXES}
    return {suffix: f"{key}.{FUSED_PREFIX}{suffix}" for suffix in bitmask.SUFFIXES}


def _families_to_compress(shard_paths: list[Path], wanted: set[str] | None) -> set[str]:
    """Families with at least one member that the bitmask layout makes smaller."""
    families: set[str] = set()
    for shard in shard_paths:
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                if (wanted is not None and key not in wanted) or family(key) in families:
                    continue
                value = handle.get_tensor(key)
                if value.dim() in (2, 3) and bitmask.worth_compressing(value):
                    families.add(family(key))
    return families


def _sentinel_key(key: str) -> bool:
    """Where the no-plug-in marker may go: a plain module weight (at most a block index in its name, not a
    per-expert key that a transformers converter merges into a fused parameter)."""
    return key.endswith(".weight") and len(re.findall(r"\.\d+\.", key)) <= 1


def compress_folder(folder: Path, candidates: Iterable[str] | None = None) -> list[str]:
    """Rewrite the shards of ``folder`` so that sparse weights are stored as bitmasks.

    Every 2-D or 3-D float tensor of a family (see :func:`family`) with a member that the layout shrinks is
    compressed (``candidates``, checkpoint keys, restricts the choice when given). Returns the compressed
    checkpoint keys in file order. One of them also keeps a marker under its dense key (see
    :class:`~optimum_alpha.checkpoint.quantizer.AlphaSparseConfig`).
    """
    wanted = set(candidates) if candidates is not None else None
    shard_paths, index = _shards(folder)
    families = _families_to_compress(shard_paths, wanted)
    compressed: list[str] = []
    sentinel_written = False
    new_weight_map: dict[str, str] = {}
    total_size = 0
    for shard in shard_paths:
        with safe_open(str(shard), framework="pt") as handle:
            file_metadata = handle.metadata()
            tensors: dict[str, torch.Tensor] = {}
            for key in handle.keys():
                value = handle.get_tensor(key)
                if (family(key) in families and (wanted is None or key in wanted) and value.dim() in (2, 3)
                        and value.dtype in bitmask.SUPPORTED_DTYPES):
                    names = stored_keys(key)
                    for suffix, part in bitmask.compress(value).items():
                        tensors[names[suffix]] = part
                    if not sentinel_written and _sentinel_key(key):
                        tensors[key] = _sentinel_tensor()
                        sentinel_written = True
                    compressed.append(key)
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
    folder: Path, compressed: list[str], global_sparsity: float | None, version: str
) -> None:
    """Add the ``alpha_sparse`` ``quantization_config`` block to ``config.json``."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    sentinel = next((key for key in compressed if _sentinel_key(key)), None)
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "sparsity_structure": "unstructured",
        "global_sparsity": global_sparsity,
        "compressed_modules": [bitmask.module_prefix(key) for key in compressed],
        "sentinel": sentinel,
        "version": version,
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
