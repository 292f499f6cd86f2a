"""LoRA recovery through peft: adapters on chosen Linear layers (and, optionally, fused expert parameters),
merged back into the weights at the end, after which the pruned entries are set to 0 again.

The merge adds a dense low-rank update B·A to every adapted weight; only its entries on kept weights survive
the re-applied mask. Training does not see that cut (the adapters train against the unmasked sum), which is
why full fine-tuning, whose updates never touch a pruned entry, recovers more for the same tokens.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from ..matrices import matches, model_weights
from ..model_utils import PRUNABLE_TYPES
from .config import RecoveryConfig


def default_targets(model: nn.Module) -> list[str]:
    """Full names of every prunable Linear/Conv1D inside the blocks (routers and ignored layers excluded)."""
    _, blocks = model_weights(model)
    return [m.name for block in blocks for m in block.matrices if not m.is_expert]


def expert_parameters(model: nn.Module) -> list[str]:
    """Full names of the fused 3-D expert parameters that hold prunable matrices."""
    _, blocks = model_weights(model)
    modules = {id(module): name for name, module in model.named_modules()}
    names = {f"{modules[id(m.module)]}.{m.param_name}" for block in blocks for m in block.matrices if m.is_expert}
    return sorted(names)


def check_targets(model: nn.Module, config: RecoveryConfig) -> list[str]:
    """The adapter targets; a target that names no Linear layer of the model is one line, before training."""
    if config.lora_targets is None:
        targets = default_targets(model)
    else:
        linear = [name for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]
        for target in config.lora_targets:
            if not any(matches(name, [target]) for name in linear):
                endings = sorted({name.rsplit(".", 1)[-1] for name in linear})
                raise ConfigError(f"LoRA target {target!r} matches no Linear layer of the model; its Linear layers "
                                  f"are named {', '.join(endings)}.")
        targets = list(config.lora_targets)
    if not targets and not config.lora_experts:
        raise ConfigError("The model has no Linear layer to put a LoRA adapter on; use method='full'.")
    if config.lora_experts and not expert_parameters(model):
        raise ConfigError("lora_experts=True but the model has no fused expert parameters; drop lora_experts.")
    return targets


def attach_lora(model: nn.Module, config: RecoveryConfig, targets: list[str]) -> Any:
    """The peft model with adapters on ``targets`` (every base weight frozen)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM",
                      target_parameters=expert_parameters(model) if config.lora_experts else None)
    return get_peft_model(model, lora)


def merge_lora(peft_model: Any) -> nn.Module:
    """The base model with the adapters merged into its weights (the caller re-applies the masks)."""
    return peft_model.merge_and_unload()
