"""Calibration statistics of prunable matrices: what each matrix multiplies during a dense pass of its block.

One collector serves every consumer (the Wanda/SparseGPT/ALPS layer pruners and OWL's outlier ratios): each
matrix gets a *sink* with ``add_batch(inputs)``, and :func:`collect_block_statistics` feeds it exactly the
rows that matrix sees:

* a Linear/Conv1D matrix: the layer's input;
* an expert's gate and up matrices: the hidden states of the tokens routed to that expert;
* an expert's down matrix: that expert's intermediate activation on those tokens, computed with the module's
  own gate (``_apply_gate``, so interleaved or clamped gates such as GPT-OSS's are handled) or activation.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from accelerate.utils import align_module_device
from torch import nn

from .calibration import BlockInputs, run_block
from .matrices import PrunableMatrix


class Sink(Protocol):
    def add_batch(self, inputs: torch.Tensor) -> None: ...


class InputSquaredNorms:
    """Σ x² per input feature over the calibration tokens: Wanda's ‖X_j‖₂² and OWL's outlier statistic.

    Summed in float64, so that the result does not depend on how the windows are batched or split across
    ranks beyond float64 rounding (the float32 norms the pruners use are then the same)."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # float64, (in,)
        self.tokens = 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        flat = inputs.reshape(-1, inputs.shape[-1])
        batch = flat.double().pow(2).sum(dim=0)
        self.sums = batch if self.sums is None else self.sums.add_(batch)
        self.tokens += flat.shape[0]

    def partial_sums(self, width: int) -> list[torch.Tensor]:
        """This process's Σx² (zeros when it saw no token) and token count, for a sum over ranks."""
        sums = self.sums if self.sums is not None else torch.zeros(width, dtype=torch.float64)
        return [sums, torch.tensor([float(self.tokens)], dtype=torch.float64)]

    def load_sums(self, sums: list[torch.Tensor]) -> None:
        self.tokens = int(round(float(sums[1])))
        self.sums = sums[0] if self.tokens else None

    def norms(self, device: torch.device | str | None = None) -> torch.Tensor:
        """‖X_j‖₂ per input feature, float32."""
        if self.sums is None:
            raise RuntimeError("No calibration inputs were recorded.")
        sums = self.sums.to(device) if device is not None else self.sums
        return sums.sqrt().float()


def _routing_arguments(module: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states, expert indices) of an experts module call, whatever the parameter names."""
    names = list(inspect.signature(type(module).forward).parameters)[1:]
    bound = dict(zip(names, args))
    bound.update(kwargs)
    return bound[names[0]], bound[names[1]]


def routed_tokens(hidden: torch.Tensor, index: torch.Tensor, num_experts: int) -> Iterator[tuple[int, torch.Tensor]]:
    """For each expert that receives tokens: (expert, the hidden rows routed to it)."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    routes = index.reshape(flat.shape[0], -1)
    for expert in range(num_experts):
        rows = (routes == expert).any(dim=1)
        if bool(rows.any()):
            yield expert, flat[rows]


def expert_intermediate(module: nn.Module, expert: int, x: torch.Tensor) -> torch.Tensor:
    """The input of expert ``expert``'s down projection for rows ``x``, as the module's forward computes it."""
    name = "gate_up_proj" if module.has_gate else "up_proj"
    weight = getattr(module, name)[expert]
    proj = x @ weight if module.is_transposed else F.linear(x, weight)
    bias = getattr(module, f"{name}_bias", None) if getattr(module, "has_bias", False) else None
    if bias is not None:
        proj = proj + bias[expert]
    return module._apply_gate(proj) if module.has_gate else module.act_fn(proj)


def _expert_hook(module: nn.Module, by_expert: Mapping[int, dict[str, Sink]]):
    experts = next(p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3)

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden, index = _routing_arguments(mod, args, kwargs)
        with align_module_device(mod):
            for expert, x in routed_tokens(hidden.detach(), index, experts):
                sinks = by_expert.get(expert, {})
                for part in ("gate", "up"):
                    if part in sinks:
                        sinks[part].add_batch(x)
                if "down" in sinks:
                    sinks["down"].add_batch(expert_intermediate(mod, expert, x))

    return hook


def _role(matrix: PrunableMatrix) -> str:
    """gate / up (inputs: routed hidden states) or down (input: the intermediate activation)."""
    if matrix.part is not None:
        return matrix.part
    return "up" if matrix.param_name == "up_proj" else "down"


@torch.no_grad()
def collect_block_statistics(block: nn.Module, block_index: int, matrices: Sequence[PrunableMatrix],
                             sinks: Mapping[str, Sink], inputs: BlockInputs,
                             keep_outputs: bool = False) -> list[torch.Tensor]:
    """One pass of the block over the calibration set, feeding every matrix's inputs to its sink; returns the
    block's outputs when ``keep_outputs`` (a dense pass that also moves the calibration one block on)."""
    handles = []
    experts: dict[int, tuple[nn.Module, dict[int, dict[str, Sink]]]] = {}
    for matrix in matrices:
        if matrix.name not in sinks:
            continue
        sink = sinks[matrix.name]
        if matrix.is_expert:
            _, by_expert = experts.setdefault(id(matrix.module), (matrix.module, {}))
            by_expert.setdefault(matrix.expert, {})[_role(matrix)] = sink
        else:
            def hook(module: nn.Module, args: tuple, output: Any, sink: Sink = sink) -> None:
                sink.add_batch(args[0].detach())

            handles.append(matrix.module.register_forward_hook(hook))
    for module, by_expert in experts.values():
        handles.append(module.register_forward_hook(_expert_hook(module, by_expert), with_kwargs=True))
    try:
        return run_block(block, inputs, block_index, keep_outputs=keep_outputs)
    finally:
        for handle in handles:
            handle.remove()
