"""The shape of a block that width pruning can shrink, and the plan of what each block keeps.

Width pruning needs a block whose attention has separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` with a
fixed ``head_dim`` and whose MLP is gated (``gate_proj``/``up_proj``/``down_proj``): Llama, Mistral, Qwen2/3
and their relatives. Query head ``h`` reads key/value head ``h // (H / K)`` (``repeat_kv``), so removing the
same number of query heads from every KV group keeps grouped-query attention uniform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..errors import ConfigError, ModelStructureError

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class BlockWidth:
    """How many query heads, key/value heads and MLP channels one block has."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class BlockLayout:
    """The modules of one width-prunable block and its current width."""

    attention: nn.Module
    mlp: nn.Module
    hidden_size: int
    head_dim: int
    width: BlockWidth

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.width.num_attention_heads // self.width.num_key_value_heads

    def params(self, width: BlockWidth | None = None) -> int:
        """Weights of the block's seven Linear layers at ``width`` (default: the current one)."""
        w = width or self.width
        attention = self.hidden_size * self.head_dim * 2 * (w.num_attention_heads + w.num_key_value_heads)
        return attention + 3 * self.hidden_size * w.intermediate_size


def _linear(parent: nn.Module, name: str, where: str) -> nn.Linear:
    module = getattr(parent, name, None)
    if not isinstance(module, nn.Linear):
        raise ModelStructureError(
            f"{where} has no nn.Linear {name!r}: width pruning (structure='width') supports blocks with "
            f"separate {'/'.join(ATTENTION_PROJECTIONS)} attention and a gated {'/'.join(MLP_PROJECTIONS)} MLP "
            "(Llama, Mistral, Qwen2/3...). Use structure='unstructured' for this model."
        )
    return module


def block_layout(block: nn.Module, index: int) -> BlockLayout:
    """Find the attention and gated MLP of a block; raise a clear error for any other architecture."""
    where = f"Block {index} ({type(block).__name__})"
    attention, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    if attention is None or mlp is None:
        raise ModelStructureError(
            f"{where} has no self_attn/mlp pair: width pruning supports Llama-style blocks (Llama, Mistral, "
            "Qwen2/3...), not GPT-2/OPT-style ones yet. Use structure='unstructured' for this model."
        )
    q, k, _, o = (_linear(attention, name, f"{where}.self_attn") for name in ATTENTION_PROJECTIONS)
    gate, up, down = (_linear(mlp, name, f"{where}.mlp") for name in MLP_PROJECTIONS)
    head_dim = getattr(attention, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim < 1 or q.out_features % head_dim or k.out_features % head_dim:
        raise ModelStructureError(f"{where}: attention head_dim {head_dim!r} does not split q_proj/k_proj.")
    heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
    if heads % kv_heads:
        raise ModelStructureError(
            f"{where}: {heads} query heads do not divide into {kv_heads} key/value groups, so heads cannot be "
            "removed evenly per group; check the model's num_attention_heads / num_key_value_heads."
        )
    if o.in_features != q.out_features:
        raise ModelStructureError(f"{where}: o_proj reads {o.in_features} inputs, q_proj gives {q.out_features}.")
    if gate.out_features != up.out_features or down.in_features != gate.out_features:
        raise ModelStructureError(f"{where}: gate/up/down projections disagree on the intermediate size.")
    width = BlockWidth(heads, kv_heads, gate.out_features)
    return BlockLayout(attention, mlp, q.in_features, head_dim, width)


@dataclass(frozen=True)
class WidthPlan:
    """What one block keeps: its new width, and whether whole KV groups (not single heads) go."""

    width: BlockWidth
    prune_kv_groups: bool


def _heads_kept(layout: BlockLayout, fraction: float, kv_groups: bool, head_sparsity: float | None,
                index: int) -> BlockWidth:
    """Width with the attention part of ``fraction`` removed (MLP untouched): per group, or whole groups."""
    w = layout.width
    share = fraction if head_sparsity is None else head_sparsity
    if kv_groups:
        removed = round(share * w.num_key_value_heads)
        if head_sparsity is not None and removed >= w.num_key_value_heads:
            raise ConfigError(
                f"head_sparsity={head_sparsity} removes all {w.num_key_value_heads} key/value groups of block "
                f"{index}; use head_sparsity < {(w.num_key_value_heads - 0.5) / w.num_key_value_heads:.3f}."
            )
        kv = w.num_key_value_heads - min(removed, w.num_key_value_heads - 1)
        return BlockWidth(kv * layout.group_size, kv, w.intermediate_size)
    g = layout.group_size
    removed = round(share * g)
    if head_sparsity is not None and removed >= g:
        raise ConfigError(
            f"head_sparsity={head_sparsity} removes all {g} query heads of each key/value group of block {index}; "
            f"use head_sparsity < {(g - 0.5) / g:.3f} or prune_kv_groups=True to remove whole groups."
        )
    kept = g - min(removed, g - 1)
    return BlockWidth(kept * w.num_key_value_heads, w.num_key_value_heads, w.intermediate_size)


def plan_block(layout: BlockLayout, fraction: float, index: int, prune_kv_groups: bool | None = None,
               head_sparsity: float | None = None, channel_multiple: int = 1) -> WidthPlan:
    """Remove ``fraction`` of the block's weights: heads first (about the same share of attention), then MLP
    channels fill the rest exactly (to one channel). At least one head per kept group and one channel stay.

    ``channel_multiple`` (M of an N:M pattern applied after width pruning): the kept channels, which are
    ``down_proj``'s inputs, are rounded to the nearest multiple of M (at least M), so that the pattern's
    groups fit; the block then loses up to M/2 channels more or less than its share."""
    kv_groups = layout.group_size == 1 if prune_kv_groups is None else bool(prune_kv_groups)
    total = layout.params()
    budget = fraction * total
    width = _heads_kept(layout, fraction, kv_groups, head_sparsity, index)
    channel = 3 * layout.hidden_size
    if head_sparsity is None:  # give heads back while they alone overshoot the block's budget
        full = layout.width.num_attention_heads
        while total - layout.params(width) > budget + channel / 2 and width.num_attention_heads < full:
            g, kv = layout.group_size, width.num_key_value_heads
            if kv_groups:
                kv += 1
                width = BlockWidth(kv * g, kv, width.intermediate_size)
            else:
                width = BlockWidth(width.num_attention_heads + kv, kv, width.intermediate_size)
    intermediate = layout.width.intermediate_size
    channels = round((budget - (total - layout.params(width))) / channel)
    if channels > intermediate - 1 and head_sparsity is None:  # near the bound: every removable head goes
        width = _heads_kept(layout, 1.0, kv_groups, None, index)
        channels = round((budget - (total - layout.params(width))) / channel)
    if channels < 0:
        raise ConfigError(
            f"head_sparsity={head_sparsity} alone removes more than block {index}'s share "
            f"({fraction:.3f}) of its weights; lower head_sparsity or raise sparsity."
        )
    if channels > intermediate - 1:
        raise ConfigError(
            f"Removing {fraction:.3f} of block {index}'s weights would remove all its MLP channels; lower the "
            f"sparsity (at most {max_fraction(layout, kv_groups, head_sparsity):.3f} for this block)."
        )
    kept = intermediate - channels
    if channel_multiple > 1 and intermediate % channel_multiple == 0:
        kept = min(intermediate, max(channel_multiple, round(kept / channel_multiple) * channel_multiple))
    return WidthPlan(BlockWidth(width.num_attention_heads, width.num_key_value_heads, kept), kv_groups)


def max_fraction(layout: BlockLayout, kv_groups: bool, head_sparsity: float | None = None) -> float:
    """The largest fraction a block can lose with one head per group (or one group) and one channel left."""
    w = layout.width
    if head_sparsity is not None:
        heads = _heads_kept(layout, head_sparsity, kv_groups, head_sparsity, 0)
    elif kv_groups:
        heads = BlockWidth(layout.group_size, 1, w.intermediate_size)
    else:
        heads = BlockWidth(w.num_key_value_heads, w.num_key_value_heads, w.intermediate_size)
    smallest = BlockWidth(heads.num_attention_heads, heads.num_key_value_heads, 1)
    return 1.0 - layout.params(smallest) / layout.params()
