"""Writing pruned weights back into models dispatched by accelerate, wherever each weight lives.

With a ``device_map``, accelerate keeps an offloaded layer's weight on the meta device and materialises it
from the hook's ``weights_map`` on every forward (``pre_forward``), discarding it afterwards
(``post_forward``). An in-place edit made under ``align_module_device`` therefore only changes a temporary
copy. The write has to reach the map itself:

* CPU offload: the map holds real CPU tensors (a dict, or ``OffloadedWeightsLoader.state_dict``); the new
  values are copied into that tensor in place, so anything sharing it sees them too.
* Disk offload: the map reads from ``offload_folder`` (``.dat`` memory maps) or straight from the model's
  own safetensors files. The new tensor is written as ``<name>.dat`` in the offload folder and the loader's
  index entry points to it; the user's checkpoint is never modified.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import torch
from accelerate.hooks import AlignDevicesHook, SequentialHook
from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, offload_weight
from torch import nn

from .errors import ModelStructureError
from .model_utils import Conv1D, set_weight_matrix


def offload_hook(module: nn.Module) -> AlignDevicesHook | None:
    """The accelerate hook that offloads this module's own parameters, if any."""
    hook = getattr(module, "_hf_hook", None)
    hooks = hook.hooks if isinstance(hook, SequentialHook) else [hook]
    for candidate in hooks:
        if isinstance(candidate, AlignDevicesHook) and candidate.offload and candidate.weights_map is not None:
            return candidate
    return None


def _resolve(weights_map: Mapping, name: str) -> tuple[Mapping, str]:
    """Unwrap ``PrefixedDataset`` layers: the underlying mapping and the full key of ``name`` in it."""
    key = name
    while isinstance(weights_map, PrefixedDataset):
        key = weights_map.prefix + key
        weights_map = weights_map.dataset
    return weights_map, key


def _copy_into(target: torch.Tensor, value: torch.Tensor) -> None:
    if target.shape != value.shape:
        raise ModelStructureError(
            f"Offloaded tensor has shape {tuple(target.shape)} but the new value has {tuple(value.shape)}; "
            "the device map does not match the model. Reload the model with the same device_map."
        )
    target.copy_(value.to(device=target.device, dtype=target.dtype))


def store_offloaded(weights_map: Mapping, name: str, value: torch.Tensor) -> None:
    """Replace the stored tensor ``name`` (relative to the hook's map) by ``value``, in its storage."""
    storage, key = _resolve(weights_map, name)
    if isinstance(storage, OffloadedWeightsLoader):
        if key in storage.state_dict:
            _copy_into(storage.state_dict[key], value)
            return
        if storage.save_folder is None:
            # No folder to write to: keep the pruned tensor in memory, where the loader looks first.
            storage.state_dict[key] = value.detach().to("cpu").clone()
            return
        # offload_weight writes <key>.dat and sets index[key] to {dtype, shape}, replacing any pointer to
        # the original safetensors file; bfloat16 is stored as int16 as accelerate expects.
        offload_weight(value.detach().to("cpu").contiguous(), key, storage.save_folder, index=storage.index)
        return
    if isinstance(storage, MutableMapping):
        if key in storage:
            _copy_into(storage[key], value)
        else:
            storage[key] = value.detach().to("cpu").clone()
        return
    raise ModelStructureError(
        f"Cannot write the pruned weight {key!r} back into an offload map of type {type(storage).__name__}; "
        "dispatch the model with accelerate's device_map (CPU or disk offload) or keep it in memory."
    )


def write_layer_weight(layer: nn.Module, matrix: torch.Tensor) -> None:
    """Write a pruned (out, in) matrix into the layer wherever its weight lives (memory, CPU or disk offload)."""
    hook = offload_hook(layer)
    if hook is None:
        if layer.weight.device.type == "meta":
            # Copying into a meta tensor is a silent no-op: refuse rather than lose the pruned weights.
            raise ModelStructureError(
                f"The weight of {type(layer).__name__} is on the meta device and no accelerate offload hook of "
                "the layer holds it, so the pruned values cannot be stored. Load the model with "
                "from_pretrained(..., device_map=...) (one hook per layer) or fully in memory."
            )
        set_weight_matrix(layer, matrix)
        return
    value = matrix.t() if Conv1D and isinstance(layer, Conv1D) else matrix
    store_offloaded(hook.weights_map, "weight", value.to(dtype=layer.weight.dtype).contiguous())
