"""Pruning models dispatched with a device map: disk and CPU offload give the in-memory result, bitwise."""

from __future__ import annotations

import hashlib

import pytest
import torch
from accelerate import cpu_offload
from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset, align_module_device
from transformers import AutoModelForCausalLM

from optimum_alpha import AlphaPruningConfig
from optimum_alpha.data import load_texts
from optimum_alpha.matrices import model_weights
from optimum_alpha.offload import offload_hook, store_offloaded, write_layer_weight
from optimum_alpha.pruner import AlphaPruner

from conftest import make_tiny_model

BLOCKS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama", seed=3, layers=BLOCKS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calibration") / "text.txt"
    path.write_text("\n\n".join(load_texts("c4")[:8]))
    return path


def disk_map(blocks_on_disk: range) -> dict[str, str]:
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    for i in range(BLOCKS):
        device_map[f"model.layers.{i}"] = "disk" if i in blocks_on_disk else "cpu"
    return device_map


def block_weights(model) -> dict[str, torch.Tensor]:
    """Every prunable weight, materialised from wherever it lives."""
    return {m.name: m.read().clone() for block in model_weights(model)[1] for m in block.matrices}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method,allocation", [("wanda", "alpha"), ("sparsegpt", "uniform")])
def test_disk_offloaded_half_prunes_bitwise_like_in_memory(checkpoint, calibration_file, tiny_tokenizer, tmp_path,
                                                          method, allocation):
    config = AlphaPruningConfig(sparsity=0.6, method=method, allocation=allocation, nsamples=2, seqlen=32,
                                calibration_dataset=calibration_file, seed=1, blocksize=16)
    in_memory = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    AlphaPruner.from_pretrained(in_memory, tokenizer=tiny_tokenizer, show_progress=False).prune(
        config, show_progress=False)

    device_map = disk_map(range(BLOCKS // 2, BLOCKS))
    checkpoint_hash = sha256(checkpoint / "model.safetensors")
    offloaded = AutoModelForCausalLM.from_pretrained(checkpoint, device_map=device_map,
                                                     offload_folder=tmp_path / "offload").eval()
    assert offloaded.model.layers[BLOCKS - 1].mlp.up_proj.weight.device.type == "meta"
    AlphaPruner.from_pretrained(offloaded, tokenizer=tiny_tokenizer, show_progress=False).prune(
        config, show_progress=False)

    expected, got = block_weights(in_memory), block_weights(offloaded)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert (got["model.layers.3.mlp.up_proj"] == 0).float().mean() > 0.3  # the offloaded blocks really were pruned
    # The device map survives, the weights stay offloaded and the user's checkpoint is untouched.
    assert offloaded.hf_device_map == device_map
    assert offloaded.model.layers[BLOCKS - 1].mlp.up_proj.weight.device.type == "meta"
    assert sha256(checkpoint / "model.safetensors") == checkpoint_hash
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(in_memory(ids).logits, offloaded(ids).logits)


def test_cpu_offloaded_blocks_are_written_in_their_state_dict(checkpoint, calibration_file, tiny_tokenizer):
    config = AlphaPruningConfig(sparsity=0.5, method="wanda", allocation="uniform", nsamples=2, seqlen=32,
                                calibration_dataset=calibration_file)
    in_memory = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    AlphaPruner.from_pretrained(in_memory, tokenizer=tiny_tokenizer, show_progress=False, run_analysis=False).prune(
        config, show_progress=False)
    offloaded = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    state_dict = {k: v.clone() for k, v in offloaded.model.layers[1].state_dict().items()}
    cpu_offload(offloaded.model.layers[1], execution_device="cpu", state_dict=state_dict)
    assert offload_hook(offloaded.model.layers[1].self_attn.q_proj) is not None
    AlphaPruner.from_pretrained(offloaded, tokenizer=tiny_tokenizer, show_progress=False, run_analysis=False).prune(
        config, show_progress=False)
    expected, got = block_weights(in_memory), block_weights(offloaded)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert torch.equal(state_dict["self_attn.q_proj.weight"], got["model.layers.1.self_attn.q_proj"])


def test_write_to_disk_offload_keeps_bfloat16(checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map=disk_map(range(BLOCKS)), dtype=torch.bfloat16,
                                                 offload_folder=tmp_path / "offload")
    layer = model.model.layers[0].mlp.down_proj
    new = torch.arange(layer.weight.numel(), dtype=torch.float32).reshape(layer.weight.shape) / 7
    write_layer_weight(layer, new)
    assert (tmp_path / "offload" / "model.layers.0.mlp.down_proj.weight.dat").is_file()
    with align_module_device(layer):
        assert layer.weight.dtype == torch.bfloat16
        assert torch.equal(layer.weight, new.to(torch.bfloat16))
    assert layer.weight.device.type == "meta"


def test_plain_dict_maps_and_in_memory_layers():
    layer = torch.nn.Linear(4, 3)
    write_layer_weight(layer, torch.ones(3, 4))
    assert torch.equal(layer.weight.data, torch.ones(3, 4))
    storage = {"block.fc.weight": torch.zeros(3, 4)}
    store_offloaded(PrefixedDataset(storage, "block.fc."), "weight", torch.full((3, 4), 2.0))
    assert torch.equal(storage["block.fc.weight"], torch.full((3, 4), 2.0))
    with pytest.raises(ValueError, match="device map does not match"):
        store_offloaded(storage, "block.fc.weight", torch.zeros(2, 2))
    # dispatch_model's CPU offload: an OffloadedWeightsLoader whose state_dict holds the tensors.
    kept = torch.zeros(3, 4, dtype=torch.float16)
    loader = OffloadedWeightsLoader(state_dict={"fc.weight": kept})
    store_offloaded(PrefixedDataset(loader, "fc."), "weight", torch.full((3, 4), 0.5))
    assert kept.dtype == torch.float16 and torch.equal(loader["fc.weight"], torch.full((3, 4), 0.5).half())
    with pytest.raises(ValueError, match="meta device"):
        write_layer_weight(torch.nn.Linear(4, 3, device="meta"), torch.ones(3, 4))
