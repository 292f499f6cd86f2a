"""Make a block physically smaller: new Linear modules with the kept rows/columns, attention told its heads.

The attention forward of Llama-style models reshapes with ``-1`` heads and a fixed ``head_dim``; only
``num_key_value_groups`` (how often each key/value head is repeated) must follow the new head counts. The
same function sizes empty blocks before a checkpoint's weights are loaded (:func:`resize_block`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelStructureError
from .layout import BlockLayout, BlockWidth, block_layout
from .saliency import head_columns

# Attributes some attention classes keep besides num_key_value_groups (older or remote-code models).
_HEAD_ATTRIBUTES = {"num_heads": "num_attention_heads", "num_attention_heads": "num_attention_heads",
                    "num_key_value_heads": "num_key_value_heads"}


def _new_linear(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                      dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.train(old.training)
    return layer


def _rows(layer: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    rows = rows.to(layer.weight.device)
    bias = layer.bias.data[rows] if layer.bias is not None else None
    return _new_linear(layer, layer.weight.data[rows], bias)


def _columns(layer: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    bias = layer.bias.data if layer.bias is not None else None
    return _new_linear(layer, weight.to(layer.weight.dtype), bias)


def set_head_counts(attention: nn.Module, width: BlockWidth) -> None:
    """Tell the attention module its new head counts (``head_dim`` stays)."""
    attention.num_key_value_groups = width.num_attention_heads // width.num_key_value_heads
    for attribute, field in _HEAD_ATTRIBUTES.items():
        if isinstance(getattr(attention, attribute, None), int):
            setattr(attention, attribute, getattr(width, field))


def shrink_block(layout: BlockLayout, kept_q: torch.Tensor, kept_kv: torch.Tensor, channels: torch.Tensor,
                 o_weight: torch.Tensor, down_weight: torch.Tensor) -> BlockWidth:
    """Replace the block's seven Linear layers by smaller ones; ``o_weight``/``down_weight`` are the new
    consumers (refitted or sliced) over the kept inputs. Returns the new width."""
    attention, mlp, hd = layout.attention, layout.mlp, layout.head_dim
    attention.q_proj = _rows(attention.q_proj, head_columns(kept_q, hd))
    attention.k_proj = _rows(attention.k_proj, head_columns(kept_kv, hd))
    attention.v_proj = _rows(attention.v_proj, head_columns(kept_kv, hd))
    attention.o_proj = _columns(attention.o_proj, o_weight)
    mlp.gate_proj = _rows(mlp.gate_proj, channels)
    mlp.up_proj = _rows(mlp.up_proj, channels)
    mlp.down_proj = _columns(mlp.down_proj, down_weight)
    width = BlockWidth(len(kept_q), len(kept_kv), len(channels))
    set_head_counts(attention, width)
    return width


def _empty_like(old: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    device, dtype = old.weight.device, old.weight.dtype
    layer = nn.Linear(in_features, out_features, bias=old.bias is not None, device=device, dtype=dtype)
    layer.train(old.training)
    return layer


def resize_block(block: nn.Module, index: int, width: BlockWidth) -> None:
    """Give an (empty, usually meta-device) block the shapes of ``width`` before weights are loaded."""
    layout = block_layout(block, index)
    attention, mlp = layout.attention, layout.mlp
    hd, d = layout.head_dim, layout.hidden_size
    if width.num_attention_heads % width.num_key_value_heads:
        raise ModelStructureError(
            f"Block {index}: {width.num_attention_heads} heads do not divide into {width.num_key_value_heads} "
            "key/value groups; the checkpoint's alpha_block_widths are corrupt."
        )
    q, kv, inter = width.num_attention_heads * hd, width.num_key_value_heads * hd, width.intermediate_size
    attention.q_proj = _empty_like(attention.q_proj, q, d)
    attention.k_proj = _empty_like(attention.k_proj, kv, d)
    attention.v_proj = _empty_like(attention.v_proj, kv, d)
    attention.o_proj = _empty_like(attention.o_proj, d, q)
    mlp.gate_proj = _empty_like(mlp.gate_proj, inter, d)
    mlp.up_proj = _empty_like(mlp.up_proj, inter, d)
    mlp.down_proj = _empty_like(mlp.down_proj, d, inter)
    set_head_counts(attention, width)


def resize_blocks(blocks: Sequence[nn.Module], widths: Sequence[BlockWidth]) -> None:
    if len(blocks) != len(widths):
        raise ModelStructureError(
            f"The checkpoint lists widths for {len(widths)} blocks but the model has {len(blocks)}."
        )
    for index, (block, width) in enumerate(zip(blocks, widths)):
        resize_block(block, index, width)
