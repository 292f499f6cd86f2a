"""Sequential calibration: capture what block 0 receives, then replay blocks one at a time.

Current transformers passes ``position_embeddings``, masks that may be None, ``position_ids`` and cache
flags as keyword arguments to every decoder layer, and the set differs between architectures and versions.
So nothing is listed here: a forward pre-hook records *all* positional and keyword arguments of block 0,
and every block is replayed with exactly those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


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
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.device == b.device
            and torch.equal(a, b)
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


@dataclass
class BlockInputs:
    """Hidden states entering the current block, one tensor per calibration sample, plus the extra
    arguments every block receives. Identical extras (the usual case: same length, no padding) are stored
    once, so a 4-D attention mask does not cost one copy per sample."""

    hidden_states: list[torch.Tensor] = field(default_factory=list)
    extras: list[tuple[tuple, dict]] = field(default_factory=list)
    extra_index: list[int] = field(default_factory=list)

    def add(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> None:
        self.hidden_states.append(hidden)
        for i, (a, k) in enumerate(self.extras):
            if _same(a, args) and _same(k, kwargs):
                self.extra_index.append(i)
                return
        self.extras.append((args, kwargs))
        self.extra_index.append(len(self.extras) - 1)

    def __len__(self) -> int:
        return len(self.hidden_states)

    def arguments(self, i: int, device: torch.device) -> tuple[tuple, dict]:
        args, kwargs = self.extras[self.extra_index[i]]
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
def capture_block_inputs(model: nn.Module, first_block: nn.Module, input_ids: torch.Tensor) -> BlockInputs:
    """Run the model's embedding stage on each calibration window and record block 0's arguments."""
    captured = BlockInputs()

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        captured.add(hidden.detach(), tuple(rest), dict(kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    embed_device = model.get_input_embeddings().weight.device
    if embed_device.type == "meta":
        embed_device = block_execution_device(first_block)
    try:
        for window in input_ids:
            try:
                model(window.unsqueeze(0).to(embed_device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def block_output(output: Any) -> torch.Tensor:
    """Decoder layers return a tensor (Llama in transformers 5) or a tuple whose first item is it (OPT, GPT-2)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, keep_outputs: bool = True) -> list[torch.Tensor]:
    """Replay the block on every captured sample; returns its outputs (the next block's inputs)."""
    device = block_execution_device(block)
    outputs = []
    for i, hidden in enumerate(inputs.hidden_states):
        args, kwargs = inputs.arguments(i, device)
        out = block_output(block(hidden.to(device), *args, **kwargs))
        if keep_outputs:
            outputs.append(out.detach())
    return outputs
