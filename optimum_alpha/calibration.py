"""Sequential calibration: record what every block receives in one pass that computes no block, then replay
blocks one at a time (several calibration windows per forward).

transformers 5 gives each decoder layer its own arguments: ``attention_mask=causal_mask_mapping[layer_types[i]]``
(sliding-window and full-attention layers get different masks) and, in Gemma 3, per-type
``position_embeddings``. So nothing is listed here and nothing is shared by assumption: a forward pre-hook on
*every* block records all of its positional and keyword arguments except the hidden states, and each block is
replayed with exactly its own. Tensors are interned (one copy of each distinct value, compared by identity
first), so thirty blocks that receive the same mask store it once. All of these arguments are made by the
model's forward before block 0 runs, so the capture pass does not compute the blocks (each hands its input
on unchanged): a prune runs every block twice, once dense for its statistics and once pruned for the next
block's inputs (docs/distributed.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from .data import sample_calibration
from .distributed import current as current_parallel
from .errors import CalibrationDataError
from .model_utils import max_positions

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook so the rest of the model never runs."""


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Structural equality of interned arguments: equal tensors are the same object after interning."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


class _Interner:
    """One stored copy per distinct tensor value: identity first, then value equality among the few kept."""

    def __init__(self) -> None:
        self.kept: list[torch.Tensor] = []

    def __call__(self, value: Any, seen: dict[int, torch.Tensor]) -> Any:
        if isinstance(value, torch.Tensor):
            if id(value) in seen:
                return seen[id(value)]
            detached = value.detach()
            for kept in self.kept:
                if kept.shape == detached.shape and kept.dtype == detached.dtype and kept.device == detached.device \
                        and torch.equal(kept, detached):
                    seen[id(value)] = kept
                    return kept
            self.kept.append(detached)
            seen[id(value)] = detached
            return detached
        if isinstance(value, tuple):
            return tuple(self(v, seen) for v in value)
        if isinstance(value, list):
            return [self(v, seen) for v in value]
        if isinstance(value, dict):
            return {k: self(v, seen) for k, v in value.items()}
        return value


@dataclass
class ArgumentStore:
    """The extra arguments one block received for each calibration sample, identical ones stored once."""

    extras: list[tuple[tuple, dict]] = field(default_factory=list)
    extra_index: list[int] = field(default_factory=list)

    def add(self, args: tuple, kwargs: dict) -> None:
        for i, (a, k) in enumerate(self.extras):
            if _same(a, args) and _same(k, kwargs):
                self.extra_index.append(i)
                return
        self.extras.append((args, kwargs))
        self.extra_index.append(len(self.extras) - 1)


@dataclass
class BlockInputs:
    """Hidden states entering the current block, one tensor per calibration sample, and the extra arguments
    each block receives (``per_block[i]``: block i's own masks, position embeddings, cache flags)."""

    hidden_states: list[torch.Tensor] = field(default_factory=list)
    per_block: list[ArgumentStore] = field(default_factory=list)
    batch_size: int = 1  # windows per block forward in run_block

    def batches(self, block_index: int) -> list[list[int]]:
        """Consecutive windows that share this block's arguments, at most ``batch_size`` per forward."""
        store = self.per_block[block_index]
        groups: list[list[int]] = []
        for i in range(len(self.hidden_states)):
            if groups and len(groups[-1]) < self.batch_size \
                    and store.extra_index[groups[-1][0]] == store.extra_index[i] \
                    and self.hidden_states[groups[-1][0]].shape == self.hidden_states[i].shape:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    def __len__(self) -> int:
        return len(self.hidden_states)

    def arguments(self, block_index: int, i: int, device: torch.device) -> tuple[tuple, dict]:
        store = self.per_block[block_index]
        args, kwargs = store.extras[store.extra_index[i]]
        return _to_device(args, device), _to_device(kwargs, device)

    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hidden_states)


def block_execution_device(block: nn.Module) -> torch.device:
    """Where a block computes: accelerate's execution device when dispatched, else its parameters' device."""
    hook = getattr(block, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    for module in block.modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None and getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    for param in block.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


@torch.no_grad()
def capture_block_inputs(model: nn.Module, blocks: Sequence[nn.Module], input_ids: torch.Tensor,
                         batch_size: int = 1) -> BlockInputs:
    """Run the model once per calibration window, recording block 0's hidden states and every block's own
    arguments, without computing the blocks.

    Every block's arguments (masks, rotary embeddings, cache flags) are made by the model's forward before
    the first block runs (see the module docstring), so during this pass each block's ``forward`` is
    replaced by one that records its arguments and hands its input on unchanged, in the output structure the
    model expects (learnt from one real call of block 0 on the first window). The pass stops at the last
    block. So a prune runs each block twice (statistics, replay), not three times. ``batch_size``: windows
    per block forward in :func:`run_block`."""
    captured = BlockInputs(per_block=[ArgumentStore() for _ in blocks], batch_size=max(1, int(batch_size)))
    interner = _Interner()
    seen: dict[int, torch.Tensor] = {}
    last = len(blocks) - 1
    template: list[Any] = []  # block 0's real output on the first window: the structure to hand on

    def make_forward(index: int, original: Any):
        def forward(*args: Any, **kwargs: Any) -> Any:
            rest_kwargs = dict(kwargs)
            hidden, rest = (args[0], args[1:]) if args else (rest_kwargs.pop("hidden_states"), ())
            if index == 0:
                captured.hidden_states.append(hidden.detach())
            captured.per_block[index].add(interner(tuple(rest), seen), interner(rest_kwargs, seen))
            if index == last:
                raise _StopForward
            if not template:
                template.append(original(*args, **kwargs))
            return _pass_through(template[0], hidden)

        return forward

    originals = [block.__dict__.get("forward") for block in blocks]  # accelerate puts its wrapper here
    for index, block in enumerate(blocks):
        block.forward = make_forward(index, block.forward)
    embed_device = model.get_input_embeddings().weight.device
    if embed_device.type == "meta":
        embed_device = block_execution_device(blocks[0])
    try:
        for window in input_ids:
            seen.clear()  # ids are only meaningful while one window's tensors are alive
            try:
                model(window.unsqueeze(0).to(embed_device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for block, original in zip(blocks, originals):
            if original is None:
                del block.forward
            else:
                block.forward = original
    return captured


def _pass_through(template: Any, hidden: torch.Tensor) -> Any:
    """``hidden`` in the structure of a block output: a tensor, or a tuple/list whose first item it is."""
    if isinstance(template, torch.Tensor):
        return hidden
    if isinstance(template, (tuple, list)):
        return type(template)([hidden, *template[1:]])
    raise TypeError(f"Cannot hand on a block output of type {type(template).__name__} during capture.")


def block_output(output: Any) -> torch.Tensor:
    """Decoder layers return a tensor (Llama in transformers 5) or a tuple whose first item is it (OPT, GPT-2)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, block_index: int,
              keep_outputs: bool = True) -> list[torch.Tensor]:
    """Replay block ``block_index`` on every captured sample with its own arguments, ``inputs.batch_size``
    windows per forward (windows with the same arguments are stacked on the batch axis; the arguments were
    made for one window and broadcast over it, as the model's own batch-1 masks and rotary embeddings do);
    returns its outputs, one per window (the next block's inputs)."""
    device = block_execution_device(block)
    outputs = []
    for group in inputs.batches(block_index):
        args, kwargs = inputs.arguments(block_index, group[0], device)
        hidden = torch.cat([inputs.hidden_states[i] for i in group]).to(device) if len(group) > 1 \
            else inputs.hidden_states[group[0]].to(device)
        out = block_output(block(hidden, *args, **kwargs))
        if keep_outputs:
            outputs.extend(out.detach().split([inputs.hidden_states[i].shape[0] for i in group]))
    return outputs


def calibration_inputs(model: nn.Module, blocks: Sequence[nn.Module], tokenizer: Any, config: Any,
                       purpose: str | None = None) -> tuple[BlockInputs, dict[str, Any]]:
    """Sample the config's calibration windows and capture what every block receives; returns the inputs and
    how they were made (what the report and the model card record). ``purpose`` names who needs the text in
    the error raised when the model has no tokenizer."""
    if tokenizer is None:
        who = purpose or f"Method {config.method!r}"
        raise CalibrationDataError(
            f"{who} needs calibration text, hence a tokenizer, and this model has none; pass tokenizer= to "
            "AlphaPruner.from_pretrained, or use method='magnitude' with allocation='alpha' or 'uniform'."
        )
    seqlen = config.resolve_seqlen(max_positions(model))
    sample = sample_calibration(tokenizer, config.calibration_dataset, config.nsamples, seqlen, config.seed,
                                config.calibration_sampling)
    for notice in sample.notices:
        logger.warning("Calibration: %s", notice)
    ids = sample.ids
    inputs = capture_block_inputs(model, blocks, current_parallel().shard(ids),  # this rank's share
                                  max(1, config.calibration_batch_tokens // seqlen))
    details = {
        "dataset": config.to_dict()["calibration_dataset"],
        "nsamples": int(ids.shape[0]),
        "seqlen": seqlen,
        "seed": config.seed,
        "tokens": int(ids.numel()),
        **sample.describe(),
    }
    logger.info("Calibration: %d windows of %d tokens from %s (%s sampling)", details["nsamples"], seqlen,
             sample.source, sample.sampling)
    return inputs, details
