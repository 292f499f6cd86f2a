"""The prunable matrix: the one unit that ESD analysis, allocation, pruners, report and checkpoint work on.

A block's weights come in two shapes in transformers 5:

* ``nn.Linear`` / GPT-2 ``Conv1D`` layers: one matrix each (Conv1D stores it transposed).
* Fused mixture-of-experts parameters: 3-D tensors of an experts module (``gate_up_proj`` [E, 2I, H],
  ``down_proj`` [E, H, I], or transposed). transformers marks such modules with
  ``@use_experts_implementation``, which sets ``has_gate``, ``is_transposed`` and ``is_concatenated`` on the
  instance; those attributes, not a list of model families, say how to slice the tensors. Each expert's slice
  is a matrix of its own, and a fused ``gate_up_proj`` is split into its gate and up halves as the modelling
  code splits it (``chunk(2)`` when concatenated, even/odd rows when interleaved).

Every other weight inside a block (≥ 2-D, not a bias) must be pruned or ignored on purpose: routers are kept
dense by default (see :func:`find_routers`), and anything else fails with its name (see :func:`uncovered_weights`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from accelerate.utils import align_module_device
from torch import nn

from .errors import ConfigError, ModelStructureError
from .model_utils import PRUNABLE_TYPES, Conv1D, find_blocks
from .offload import offload_hook, store_offloaded, write_layer_weight


def is_fused_experts(module: nn.Module) -> bool:
    """An experts module of transformers 5: routed tokens, weights as 3-D parameters (one slice per expert)."""
    return hasattr(module, "has_gate") and hasattr(module, "is_transposed") and any(
        p.dim() == 3 for p in module.parameters(recurse=False)
    )


@dataclass(eq=False)
class PrunableMatrix:
    """A 2-D (out, in) weight: a Linear/Conv1D weight, or one expert's slice of a fused expert parameter.

    ``name`` is stable and unique in the model (``model.layers.3.mlp.down_proj``,
    ``model.layers.3.mlp.experts.5.gate_proj``); ``block_index`` is the transformer block it belongs to.
    """

    name: str
    block_index: int
    module: nn.Module
    param_name: str = "weight"
    expert: int | None = None
    part: str | None = None  # "gate" / "up" half of a fused gate_up parameter

    @property
    def is_expert(self) -> bool:
        return self.expert is not None

    def _view(self, tensor: torch.Tensor) -> torch.Tensor:
        """The (out, in) view of this matrix inside ``tensor`` (the module's parameter data)."""
        if self.expert is None:
            return tensor.t() if Conv1D and isinstance(self.module, Conv1D) else tensor
        view = tensor[self.expert]
        if self.module.is_transposed:
            view = view.t()
        if self.part is not None:
            if getattr(self.module, "is_concatenated", True):
                half = view.shape[0] // 2
                view = view[:half] if self.part == "gate" else view[half:]
            else:
                view = view[0::2] if self.part == "gate" else view[1::2]
        return view

    @property
    def shape(self) -> tuple[int, int]:
        param = getattr(self.module, self.param_name)
        return tuple(self._view(torch.empty(param.shape, device="meta")).shape)  # type: ignore[return-value]

    @property
    def numel(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def read(self) -> torch.Tensor:
        """The current weight, (out, in). For an offloaded module it is a copy loaded from the offload map."""
        if offload_hook(self.module) is None and getattr(self.module, self.param_name).device.type != "meta":
            return self._view(getattr(self.module, self.param_name).data)
        with align_module_device(self.module):
            return self._view(getattr(self.module, self.param_name).data).clone()

    def write(self, matrix: torch.Tensor) -> None:
        """Store a new (out, in) value wherever the weight lives (memory, CPU or disk offload)."""
        if self.expert is None:
            write_layer_weight(self.module, matrix)
            return
        hook = offload_hook(self.module)
        if hook is None:
            target = getattr(self.module, self.param_name).data
            if target.device.type == "meta":
                raise ConfigError(
                    f"{self.name} is on the meta device with no offload hook; load the model in memory or with "
                    "from_pretrained(..., device_map=...)."
                )
            view = self._view(target)
            view.copy_(matrix.to(dtype=view.dtype, device=view.device))
            return
        full = hook.weights_map[self.param_name].clone()
        view = self._view(full)
        view.copy_(matrix.to(dtype=view.dtype, device=view.device))
        store_offloaded(hook.weights_map, self.param_name, full)


def _expert_matrices(prefix: str, block_index: int, module: nn.Module) -> list[PrunableMatrix]:
    """One matrix per expert and projection; a fused gate_up parameter gives a gate and an up matrix."""
    matrices = []
    gate_up = "gate_up_proj" if module.has_gate else None
    for param_name, param in module.named_parameters(recurse=False):
        if param.dim() != 3:
            continue
        for expert in range(param.shape[0]):
            if param_name == gate_up:
                for part in ("gate", "up"):
                    matrices.append(PrunableMatrix(f"{prefix}.{expert}.{part}_proj", block_index, module,
                                                   param_name, expert, part))
            else:
                matrices.append(PrunableMatrix(f"{prefix}.{expert}.{param_name}", block_index, module,
                                               param_name, expert))
    return matrices


def find_routers(block: nn.Module) -> set[str]:
    """Names (inside the block) of router modules: next to an experts module, a weight with E or 1 rows.

    A router's rows score the experts (E rows; a shared-expert gate has 1); pruning them changes which
    expert a token goes to, so they stay dense unless the user prunes them explicitly.
    """
    routers: set[str] = set()
    modules = dict(block.named_modules())
    for name, module in modules.items():
        if not is_fused_experts(module):
            continue
        experts = next(p.shape[0] for p in module.parameters(recurse=False) if p.dim() == 3)
        parent_name = name.rpartition(".")[0]
        parent = modules[parent_name] if parent_name else block
        for child_name, child in parent.named_children():
            weight = getattr(child, "weight", None)
            if child is module or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                continue
            rows = weight.shape[1] if Conv1D and isinstance(child, Conv1D) else weight.shape[0]
            if rows in (experts, 1):
                routers.add(f"{parent_name}.{child_name}" if parent_name else child_name)
    return routers


def compile_patterns(patterns: Sequence[str] | None) -> list[re.Pattern | str]:
    """``re:<regex>`` patterns (matched from the start of the name, as llm-compressor does) or plain names."""
    compiled: list[re.Pattern | str] = []
    for pattern in patterns or ():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"ignore entries must be non-empty strings, got {pattern!r}.")
        if pattern.startswith("re:"):
            try:
                compiled.append(re.compile(pattern[3:]))
            except re.error as err:
                raise ConfigError(f"ignore pattern {pattern!r} is not a valid regular expression: {err}.") from err
        else:
            compiled.append(pattern)
    return compiled


def matches(name: str, patterns: Iterable[re.Pattern | str]) -> bool:
    """True when ``name`` matches a regex pattern, equals a plain name or ends with ``.<plain name>``."""
    for pattern in patterns:
        if isinstance(pattern, re.Pattern):
            if pattern.match(name):
                return True
        elif name == pattern or name.endswith("." + pattern):
            return True
    return False


def _router_weight(module: nn.Module) -> torch.Tensor | None:
    """The (experts, hidden) ``weight`` of a router that is not a Linear layer, if it has one."""
    weight = module._parameters.get("weight")
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


@dataclass
class BlockWeights:
    """Every weight of one block, sorted into what is pruned, what is kept dense on purpose, and the rest."""

    matrices: list[PrunableMatrix]
    ignored: dict[str, int]  # name -> parameter count, kept dense (routers, user's ``ignore``)
    uncovered: list[str]  # ≥2-D weights nothing knows how to prune


def classify_block(block: nn.Module, block_index: int, prefix: str,
                   ignore: Sequence[re.Pattern | str] = (), prune_routers: bool = False) -> BlockWeights:
    """Sort the block's weights: prunable matrices (minus ignored ones), ignored weights, uncovered weights."""
    routers = find_routers(block)
    matrices: list[PrunableMatrix] = []
    covered: set[tuple[int, str]] = set()  # (id(module), parameter name)
    ignored: dict[str, int] = {}
    for local, module in block.named_modules():
        full = f"{prefix}.{local}" if local else prefix
        if isinstance(module, PRUNABLE_TYPES):
            covered.add((id(module), "weight"))
            if (local in routers and not prune_routers) or matches(full, ignore):
                ignored[full] = module.weight.numel()
            else:
                matrices.append(PrunableMatrix(full, block_index, module))
        elif is_fused_experts(module):
            for matrix in _expert_matrices(full, block_index, module):
                covered.add((id(module), matrix.param_name))
                if matches(matrix.name, ignore):
                    ignored[matrix.name] = matrix.numel
                else:
                    matrices.append(matrix)
        elif local in routers and prune_routers and _router_weight(module) is not None:
            # A router module of its own class (Mixtral's top-k router): its 2-D weight is one matrix.
            covered.add((id(module), "weight"))
            if matches(full, ignore):
                ignored[full] = module.weight.numel()
            else:
                matrices.append(PrunableMatrix(full, block_index, module))
        elif local in routers and not prune_routers:
            for param_name, param in module.named_parameters(recurse=False):
                if param.dim() >= 2:
                    covered.add((id(module), param_name))
                    ignored[f"{full}.{param_name}"] = param.numel()
    uncovered = []
    for local, module in block.named_modules():
        full = f"{prefix}.{local}" if local else prefix
        for param_name, param in module.named_parameters(recurse=False):
            if param.dim() < 2 or param_name.endswith("bias") or (id(module), param_name) in covered:
                continue
            name = f"{full}.{param_name}"
            if matches(name, ignore) or matches(full, ignore):
                ignored[name] = param.numel()
            else:
                uncovered.append(name)
    if not matrices and not ignored:
        raise ModelStructureError(
            f"Block {block_index} ({type(block).__name__}) contains no nn.Linear or Conv1D layer or fused "
            "experts to prune. optimum-alpha prunes those only; check that the model is not already quantized "
            "or fused."
        )
    return BlockWeights(matrices, ignored, uncovered)


def check_covered(blocks: Sequence[BlockWeights]) -> None:
    """Fail before pruning when a block weight would silently stay dense (the report would then lie)."""
    uncovered = [name for block in blocks for name in block.uncovered]
    if uncovered:
        shown = ", ".join(uncovered[:6]) + (f" and {len(uncovered) - 6} more" if len(uncovered) > 6 else "")
        example = re.escape(uncovered[0].split(".")[-1])
        raise ConfigError(
            f"{len(uncovered)} weight(s) inside the transformer blocks can be neither pruned nor analysed: {shown}. "
            "optimum-alpha prunes Linear/Conv1D layers and transformers' fused expert parameters. Keep these "
            f"dense on purpose with ignore=[\"re:.*{example}$\"] (CLI: --ignore 're:.*{example}$')."
        )


def model_weights(model: nn.Module, ignore: Sequence[str] | None = None,
                  prune_routers: bool = False) -> tuple[str, list[BlockWeights]]:
    """``(blocks_path, one BlockWeights per transformer block)`` of a model."""
    path, blocks = find_blocks(model)
    patterns = compile_patterns(ignore)
    return path, [classify_block(block, i, f"{path}.{i}", patterns, prune_routers) for i, block in enumerate(blocks)]


__all__ = [
    "PrunableMatrix",
    "BlockWeights",
    "classify_block",
    "check_covered",
    "compile_patterns",
    "find_routers",
    "is_fused_experts",
    "matches",
    "model_weights",
]
