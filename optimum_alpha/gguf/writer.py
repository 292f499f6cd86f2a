"""``write_gguf``: one ``.gguf`` file that llama.cpp runs (tokenizer, architecture metadata, every tensor).

Everything is checked and planned before the first byte is written (family, shapes, tokenizer, types, zero
keeping); the file is written to a hidden temporary file next to the target, one tensor at a time (memory: one
tensor), and renamed into place at the end. A failure or Ctrl-C deletes the temporary file, so the target is
either the complete new file or whatever was there before.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_VERSION, GGUFWriter
from torch import nn
from tqdm.auto import tqdm

from ..errors import CheckpointError
from ..interrupts import hold_interrupts, sigterm_as_interrupt
from .families import ExportShape, export_shape, pad_ffn, permute_rows, rope_theta
from .plan import TensorPlan, block_bits, plan_tensors, type_counts
from .types import TYPES, TypeRequest, dequantize, parse_type, quantize
from .vocab import VocabMetadata, vocab_metadata

logger = logging.getLogger(__name__)


@dataclass
class GGUFSummary:
    """What was written: the file, its architecture, and the types and bits actually used."""

    path: Path
    arch: str
    request: str
    block_types: dict[str, int]  # type -> weights among the block matrices
    block_bits: float  # average bits per weight over the block matrices, as written
    file_bytes: int
    per_layer_widths: bool
    fallbacks: list[str] = field(default_factory=list)

    def describe(self) -> str:
        total = sum(self.block_types.values()) or 1
        mix = ", ".join(f"{name} {100 * n / total:.1f} %" for name, n in sorted(self.block_types.items()))
        widths = "per-layer widths" if self.per_layer_widths else "one width"
        return (f"{self.path} ({self.file_bytes / 2**20:.1f} MiB, llama.cpp arch {self.arch}, {widths}): "
                f"block matrices {mix}, {self.block_bits:.3f} bits/weight")


def check_target(path: str | os.PathLike, overwrite: bool) -> Path:
    """The resolved output path; refused (before slow work) when it is not a new or overwritable .gguf file."""
    target = Path(path).expanduser().resolve()
    if target.suffix.lower() != ".gguf":
        raise CheckpointError(f"GGUF output {path} must end in .gguf, e.g. model-q8_0.gguf.")
    if target.is_dir():
        raise CheckpointError(f"GGUF output {path} is a folder; give a file name ending in .gguf.")
    if target.exists() and not overwrite:
        raise CheckpointError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it.")
    if not target.parent.is_dir():
        raise CheckpointError(f"the folder of {path} does not exist; create {target.parent} first.")
    if not os.access(target.parent, os.W_OK):
        raise CheckpointError(f"cannot write into {target.parent}; choose another --output.")
    return target


def _model_name(model: nn.Module) -> str:
    name = str(getattr(model.config, "_name_or_path", "") or "").rstrip("/")
    # not the bare model type: transformers' reader takes a file named exactly "mistral" for a layout it cannot map
    return Path(name).name or f"{model.config.model_type}-optimum-alpha"


def _add_metadata(writer: GGUFWriter, model: nn.Module, shape: ExportShape, plans: list[TensorPlan],
                  vocab: VocabMetadata, request: TypeRequest) -> None:
    config = model.config
    writer.add_type("model")
    writer.add_name(_model_name(model))
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(len(shape.widths))
    writer.add_feed_forward_length(shape.per_layer("intermediate_size"))
    writer.add_head_count(shape.per_layer("num_attention_heads"))
    writer.add_head_count_kv(shape.per_layer("num_key_value_heads"))
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(model.get_input_embeddings().weight.shape[0]))
    counts = type_counts(plans)
    dominant = max(counts, key=counts.get) if counts else "f32"
    writer.add_file_type(int(TYPES[dominant].file_type))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_string("optimum_alpha.gguf_type", request.text)
    vocab.add_to(writer)


def file_array(plan: TensorPlan, tensor: torch.Tensor) -> np.ndarray:
    """The bytes (or floats) of one tensor in the file: llama.cpp's row order, then the planned type."""
    data = plan.padded(tensor.detach().to(device="cpu", dtype=torch.float32).numpy())
    if plan.heads is not None:
        data = permute_rows(data, plan.heads)
    return quantize(data, plan.kind)


def file_shape(model: nn.Module, request: TypeRequest) -> ExportShape:
    """The model's shape as the file states it: FFN lengths padded to whole blocks under quantised types."""
    shape = export_shape(model)
    if request.uniform is not None and not request.uniform.quantized:
        return shape
    return pad_ffn(shape, TYPES["q8_0"].block_size)


def dequantized_state_dict(model: nn.Module, gguf_type: str = "q8_0", padded: bool = False
                           ) -> dict[str, torch.Tensor]:
    """What a reader of the file gets back, in the model's own names and row order (float32).

    Quantisation works on blocks inside rows, so it commutes with the q/k row order and these are exactly
    the weights of the file; the verification compares readers against them bit for bit. FFN tensors have
    the model's shape, or with ``padded`` the file's (zero channels appended).
    """
    request = parse_type(gguf_type)
    plans = plan_tensors(model, file_shape(model, request), request, force=True, show_progress=False)
    state = model.state_dict()
    weights = {}
    for plan in plans:
        data = plan.padded(state[plan.source].detach().float().cpu().numpy())
        restored = dequantize(quantize(data, plan.kind), plan.kind).reshape(plan.file_shape)
        if not padded:
            restored = restored[tuple(slice(0, n) for n in plan.shape)]
        weights[plan.source] = torch.from_numpy(np.ascontiguousarray(restored))
    return weights


def write_gguf(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    tokenizer: Any,
    gguf_type: str = "q8_0",
    force: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> GGUFSummary:
    """Write ``model`` and ``tokenizer`` as one GGUF file for llama.cpp; returns what was written.

    ``gguf_type``: f16, bf16, q8_0, q5_0, q4_0 (q5_1/q4_1 only with ``force=True`` on pruned models), or
    ``auto:B`` for an average of B bits per weight over the block matrices chosen from the spectra.
    """
    request = parse_type(gguf_type)
    target = check_target(path, overwrite)
    shape = file_shape(model, request)
    vocab = vocab_metadata(tokenizer, int(model.get_input_embeddings().weight.shape[0]), model.config)
    plans = plan_tensors(model, shape, request, force=force, show_progress=show_progress)
    writer = GGUFWriter(path=None, arch=shape.arch_name)
    _add_metadata(writer, model, shape, plans, vocab, request)
    for plan in plans:
        writer.add_tensor_info(plan.name, plan.file_shape, np.dtype(np.float32), plan.nbytes,
                               raw_dtype=plan.kind.ggml)
    state = model.state_dict()
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with sigterm_as_interrupt():
        try:
            writer.write_header_to_file(path=temporary)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            total = sum(p.nbytes for p in plans)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"GGUF {request.text}",
                      disable=not show_progress) as progress:
                for plan in plans:
                    writer.write_tensor_data(file_array(plan, state[plan.source]))
                    progress.update(plan.nbytes)
            writer.close()
            with hold_interrupts():
                os.replace(temporary, target)
        except BaseException as error:
            writer.close()
            temporary.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise CheckpointError(f"writing {target} failed: {error}; nothing was changed there") from error
            raise
    summary = GGUFSummary(target, shape.arch_name, request.text, type_counts(plans), block_bits(plans),
                          target.stat().st_size, not shape.uniform, [p.name for p in plans if p.fell_back])
    logger.info("wrote %s", summary.describe())
    return summary
