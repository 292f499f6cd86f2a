"""Write the ``alpha_sparse`` layout through ``save_pretrained``: each shard is compressed as it is written.

Going through transformers' own ``save_pretrained`` keeps everything it does when it saves: tied-weight
de-duplication, key renaming, sharding and the index file. While :func:`compress_while_saving` is
active, every shard that ``save_pretrained`` writes into the staging folder has its sparse weights
replaced by their bitmask tensors in memory before the file is written, so the disk never holds a dense
copy. :func:`compress_folder` then rewrites, one shard at a time, only what the hook could not decide
alone: shards written some other way, and members of a family (see :func:`family`) that were written
dense before a later member showed the family compresses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from . import bitmask
from .formats import MARKER_KEY, SENTINEL_MESSAGE
from .formats import SPARSE_FORMAT as FORMAT
from .formats import SPARSE_QUANT_METHOD as QUANT_METHOD

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


def _sentinel_key(key: str) -> bool:
    """Where the no-plug-in marker may go: a plain module weight (at most a block index in its name, not a
    per-expert key that a transformers converter merges into a fused parameter)."""
    return key.endswith(".weight") and len(re.findall(r"\.\d+\.", key)) <= 1


class ShardCompressor:
    """Stores the sparse weights of each shard as bitmasks, whole families at a time, and remembers what
    it wrote so that :func:`compress_folder` only has to fix what one shard could not decide."""

    def __init__(self, candidates: Iterable[str] | None = None) -> None:
        self.wanted = set(candidates) if candidates is not None else None
        self.families: set[str] = set()  # families with a member that the layout shrinks
        self.compressed: list[str] = []  # checkpoint keys, in the order they were compressed
        self.dense_members: dict[str, list[tuple[str, str]]] = {}  # family -> (shard, key) written dense
        self.written: dict[str, list[str]] = {}  # shard file name -> the keys it holds
        self.nbytes: dict[str, int] = {}  # shard file name -> bytes of its tensors
        self.sentinel_written = False

    def _eligible(self, key: str, value: torch.Tensor) -> bool:
        return ((self.wanted is None or key in self.wanted) and value.dim() in (2, 3)
                and value.dtype in bitmask.SUPPORTED_DTYPES)

    def _store(self, key: str, value: torch.Tensor, out: dict[str, torch.Tensor]) -> None:
        names = stored_keys(key)
        for suffix, part in bitmask.compress(value).items():
            out[names[suffix]] = part
        if not self.sentinel_written and _sentinel_key(key):
            out[key] = _sentinel_tensor()
            out[MARKER_KEY] = _sentinel_tensor()  # its name is the message transformers prints without us
            self.sentinel_written = True
        self.compressed.append(key)

    def compress(self, tensors: dict[str, torch.Tensor], shard: str) -> dict[str, torch.Tensor]:
        """The tensors of one shard, sparse families stored as bitmasks; records the shard's keys and size."""
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            if self._eligible(key, value) and (family(key) in self.families or bitmask.worth_compressing(value)):
                self.families.add(family(key))
                self._store(key, value, out)
            else:
                if self._eligible(key, value):
                    self.dense_members.setdefault(family(key), []).append((shard, key))
                out[key] = value
        self.written[shard] = list(out)
        self.nbytes[shard] = sum(t.numel() * t.element_size() for t in out.values())
        return out

    def late_members(self) -> dict[str, list[str]]:
        """Shard -> keys written dense although their family compresses (a later member decided it)."""
        late: dict[str, list[str]] = {}
        for name in self.families:
            for shard, key in self.dense_members.pop(name, []):
                late.setdefault(shard, []).append(key)
        return late


_ACTIVE: dict[Path, ShardCompressor] = {}
_ACTIVE_LOCK = threading.Lock()
_ORIGINAL_WRITER: list[Any] = []


def _dispatching_writer(original: Any) -> Any:
    def write(tensors: dict[str, torch.Tensor], filename: str, *args: Any, **kwargs: Any) -> Any:
        path = Path(filename)
        compressor = _ACTIVE.get(path.parent)
        if compressor is not None:
            tensors = compressor.compress(tensors, path.name)
        return original(tensors, filename, *args, **kwargs)

    return write


@contextlib.contextmanager
def compress_while_saving(folder: Path, candidates: Iterable[str] | None = None,
                          compressor: Any = None) -> Iterator[Any]:
    """While active, shards that ``save_pretrained`` writes into ``folder`` are compressed before writing
    (by a :class:`ShardCompressor`, or by ``compressor``: anything with its ``compress(tensors, shard)``).

    Hooks the one function transformers writes shards with (``modeling_utils.safe_save_file``); other
    folders pass through untouched, and nested or concurrent saves share one hook.
    """
    from transformers import modeling_utils

    compressor = compressor if compressor is not None else ShardCompressor(candidates)
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


def _rewrite_shard(shard: Path, compressor: ShardCompressor, keys: set[str] | None) -> None:
    """Rewrite one shard in place: ``keys`` stored as bitmasks, or (None) every family decided by ``compressor``."""
    with safe_open(str(shard), framework="pt") as handle:
        file_metadata = handle.metadata()
        stored = {key: handle.get_tensor(key) for key in handle.keys()}
    if keys is None:
        tensors = compressor.compress(stored, shard.name)
    else:
        tensors = {}
        for key, value in stored.items():
            if key in keys:
                compressor._store(key, value, tensors)
            else:
                tensors[key] = value
        compressor.written[shard.name] = list(tensors)
        compressor.nbytes[shard.name] = sum(t.numel() * t.element_size() for t in tensors.values())
    # Write beside and swap, so tensors still backed by the old file stay valid until replaced.
    partial = shard.with_name(shard.name + ".partial")
    save_file(tensors, str(partial), metadata=file_metadata)
    os.replace(partial, shard)


def compress_folder(folder: Path, compressor: ShardCompressor | None = None) -> list[str]:
    """Finish the sparse layout of ``folder``: compress the shards the hook did not see, then the members of
    compressing families that were written dense, one shard in memory at a time; make the index match.

    Returns the compressed checkpoint keys (the first sentinel-eligible one keeps the marker, see
    :class:`~optimum_alpha.checkpoint.quantizer.AlphaSparseConfig`).
    """
    compressor = compressor if compressor is not None else ShardCompressor()
    shard_paths, index = _shards(folder)
    for shard in shard_paths:
        if shard.name not in compressor.written:
            _rewrite_shard(shard, compressor, None)
    for name, keys in compressor.late_members().items():
        _rewrite_shard(folder / name, compressor, set(keys))
    if index is not None:
        weight_map = {key: shard.name for shard in shard_paths for key in compressor.written[shard.name]}
        index["metadata"] = {**index.get("metadata", {}), "total_size": sum(compressor.nbytes.values())}
        index["weight_map"] = dict(sorted(weight_map.items()))
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return compressor.compressed


def write_quantization_config(
    folder: Path, compressed: list[str], global_sparsity: float | None, version: str,
    structure: str = "unstructured",
) -> dict[str, Any]:
    """Add the ``alpha_sparse`` ``quantization_config`` block to ``config.json``; returns it."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    sentinel = next((key for key in compressed if _sentinel_key(key)), None)
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "sparsity_structure": structure,  # "unstructured", "2:4" or "mixed:8", as pruned
        "global_sparsity": global_sparsity,
        "compressed_modules": [bitmask.module_prefix(key) for key in compressed],
        "sentinel": sentinel,
        "version": version,
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config["quantization_config"]
