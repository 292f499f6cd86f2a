"""Checkpoints: bitmask layout, sparse/dense round trips, the transformers plugin, atomic writes, card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from safetensors import safe_open
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from optimum_alpha.checkpoint import AlphaSparseConfig, bitmask, load_pruned, register, save_pruned
from optimum_alpha.checkpoint import save as save_module
from optimum_alpha.errors import CheckpointError
from optimum_alpha.plotting import plot_block_profile, plot_esd_fit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METADATA = {
    "config": {"sparsity": 0.7, "method": "magnitude", "allocation": "alpha"},
    "blocks": [
        {"index": 0, "score": 3.1, "target_sparsity": 0.65, "achieved_sparsity": 0.65},
        {"index": 1, "score": 4.2, "target_sparsity": 0.75, "achieved_sparsity": 0.75},
    ],
    "metric": "alpha_hill",
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "perplexity": {"dense": 21.5, "pruned": 48.25},
    "calibration": {"dataset": "c4", "nsamples": 4, "seqlen": 32},
}


def prune_by_magnitude(model: torch.nn.Module, sparsity: float) -> None:
    """Zero the smallest ``sparsity`` fraction of every Linear weight inside the decoder blocks."""
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                k = int(weight.numel() * sparsity)
                if k:  # ties at the threshold (quantized GGUF weights) prune slightly more; fine here
                    threshold = weight.abs().flatten().kthvalue(k).values
                    weight[weight.abs() <= threshold] = 0


def tiny_model(
    dtype: torch.dtype = torch.float32, sparsity: float = 0.7, tie: bool = True
) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).eval()
    prune_by_magnitude(model, sparsity)
    return model.to(dtype)


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    want, got = expected.state_dict(), actual.state_dict()
    assert set(want) == set(got)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        # Compare raw bits: exact equality including signed zeros and NaN payloads.
        bits = torch.int32 if value.dtype == torch.float32 else torch.int16
        assert torch.equal(got[key].view(bits), value.view(bits)), key


def folder_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(path.stat().st_size for path in folder.glob(pattern))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- bitmask layout -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 21),
    density=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_bitmask_round_trip_is_bitwise_and_matches_compressed_tensors_layout(
    rows, cols, density, dtype, seed
):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator).to(dtype)
    weight[torch.rand(rows, cols, generator=generator) >= density] = 0
    parts = bitmask.compress(weight)
    mask = (weight != 0).numpy()
    expected_bits = np.packbits(mask, axis=-1, bitorder="little")
    assert parts["bitmask"].dtype == torch.uint8
    assert np.array_equal(parts["bitmask"].numpy(), expected_bits)
    assert parts["compressed"].dtype == dtype and parts["compressed"].numel() == int(mask.sum())
    counts = mask.sum(axis=1)
    assert parts["row_offsets"].tolist() == (np.cumsum(counts) - counts).tolist()
    assert parts["shape"].tolist() == [rows, cols]
    dense = bitmask.decompress(parts["compressed"], parts["bitmask"], parts["shape"])
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(dense.view(bits), weight.view(bits))


def test_decompress_rejects_inconsistent_parts():
    parts = bitmask.compress(torch.tensor([[1.0, 0.0, 2.0]]))
    with pytest.raises(ValueError, match="kept values"):
        bitmask.decompress(parts["compressed"][:1], parts["bitmask"], parts["shape"])
    with pytest.raises(ValueError, match="does not fit"):
        bitmask.decompress(parts["compressed"], parts["bitmask"], [1, 30])


def test_only_weights_that_shrink_are_worth_compressing():
    dense_weight = torch.randn(64, 64)
    sparse_weight = dense_weight.clone()
    sparse_weight[:, ::2] = 0
    assert not bitmask.worth_compressing(dense_weight)
    assert bitmask.worth_compressing(sparse_weight)
    assert not bitmask.worth_compressing(sparse_weight.to(torch.int32))


# --- sparse and dense round trips ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sparse_checkpoint_loads_bitwise_with_plain_from_pretrained(tmp_path, dtype):
    model = tiny_model(dtype)
    folder = save_pruned(model, tmp_path / "sparse", format="sparse", metadata=METADATA)
    config = json.loads((folder / "config.json").read_text())
    quant = config["quantization_config"]
    assert quant["quant_method"] == "alpha_sparse" and quant["format"] == "sparse-bitmask"
    assert len(quant["compressed_modules"]) == 14  # 7 Linear layers x 2 blocks
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
        marker = handle.get_tensor(quant["sentinel"])
    assert marker.dtype == torch.uint8 and marker.dim() == 1  # the plugin-less loader trips on this
    assert {f"model.layers.1.mlp.up_proj.{s}" for s in bitmask.SUFFIXES} <= keys
    assert "model.layers.1.mlp.up_proj.weight" not in keys
    register()
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert_same_weights(model, loaded)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    # The loaded model is a plain dense model: no quantizer state is left behind.
    assert getattr(loaded.config, "quantization_config", None) is None
    assert not getattr(loaded, "is_quantized", False)


def test_unpruned_model_saved_sparse_needs_no_plugin_and_resaving_a_loaded_model_works(tmp_path):
    unpruned = save_pruned(tiny_model(sparsity=0.0), tmp_path / "unpruned", format="sparse")
    assert "quantization_config" not in json.loads((unpruned / "config.json").read_text())
    model = tiny_model()
    loaded = load_pruned(save_pruned(model, tmp_path / "first"))
    again = load_pruned(save_pruned(loaded, tmp_path / "second"))
    assert_same_weights(model, again)
    assert oct((tmp_path / "second").stat().st_mode & 0o777) == oct(0o777 & ~save_module._current_umask())


def test_dense_checkpoint_is_plain_safetensors(tmp_path):
    model = tiny_model()
    folder = save_pruned(model, tmp_path / "dense", format="dense")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert_same_weights(model, loaded)


def test_sparse_folder_is_smaller_than_dense(tmp_path):
    model = tiny_model(torch.bfloat16, sparsity=0.7)
    dense = save_pruned(model, tmp_path / "dense", format="dense")
    sparse = save_pruned(model, tmp_path / "sparse", format="sparse")
    # Layer weights dominate even this tiny model; bitmask keeps ~30 % of values + 1 bit per entry.
    assert folder_bytes(sparse) < 0.75 * folder_bytes(dense)


def test_per_layer_sparsity_after_loading_equals_saved_and_device_map_works(tmp_path):
    model = tiny_model()
    folder = save_pruned(model, tmp_path / "sparse", metadata=METADATA)
    saved = json.loads((folder / "alpha_pruning.json").read_text())["layers"]
    loaded = load_pruned(folder, device_map="cpu")
    assert loaded.model.layers[0].mlp.up_proj.weight.device.type == "cpu"
    assert save_module.layer_sparsities(loaded) == pytest.approx(saved, abs=0)
    linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    blocks = linears - {"lm_head"}
    assert set(saved) == blocks
    assert min(saved.values()) > 0.69


def test_sparse_load_honours_dtype_base_model_class_and_disk_offload(tmp_path):
    from transformers import AutoModel

    model = tiny_model()
    folder = save_pruned(model, tmp_path / "sparse")
    half = load_pruned(folder, dtype=torch.float16)
    assert half.model.layers[0].mlp.down_proj.weight.dtype == torch.float16
    want = model.model.layers[0].mlp.down_proj.weight.half()
    assert torch.equal(half.model.layers[0].mlp.down_proj.weight, want)
    base = AutoModel.from_pretrained(folder)  # no lm_head, checkpoint prefix stripped
    assert torch.equal(base.layers[1].self_attn.q_proj.weight, model.model.layers[1].self_attn.q_proj.weight)
    offloaded = load_pruned(
        folder, device_map="auto", max_memory={"cpu": "60KB"}, offload_folder=str(tmp_path / "offload")
    )
    assert "disk" in set(offloaded.hf_device_map.values())
    tokens = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        assert torch.allclose(offloaded(tokens).logits, model(tokens).logits)


def test_sharded_sparse_checkpoint_round_trips(tmp_path):
    model = tiny_model(tie=False)
    folder = save_pruned(model, tmp_path / "sharded", max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((folder / name).is_file() for name in shards)
    assert "model.layers.1.mlp.up_proj.bitmask" in index["weight_map"]
    assert_same_weights(model, load_pruned(folder))


def test_loading_without_the_plugin_fails_loudly(tmp_path):
    folder = save_pruned(tiny_model(), tmp_path / "sparse")
    script = textwrap.dedent(
        f"""
        import sys
        from transformers import AutoModelForCausalLM
        assert "optimum_alpha" not in sys.modules
        try:
            AutoModelForCausalLM.from_pretrained({str(folder)!r})
        except RuntimeError as error:
            print("LOAD-FAILED", error)
        else:
            print("LOADED-SILENTLY")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert "LOAD-FAILED" in result.stdout, output[-2000:]
    assert "alpha_sparse" in output  # transformers names the unknown quant_method
    assert "ignore_mismatched_sizes" in result.stdout


def test_plugin_refuses_to_sparsify_a_dense_model_on_load(tmp_path):
    folder = save_pruned(tiny_model(), tmp_path / "dense", format="dense")
    register()
    with pytest.raises(ValueError, match="pre-quantized"):
        AutoModelForCausalLM.from_pretrained(folder, quantization_config=AlphaSparseConfig())


def test_register_is_idempotent_and_import_registers():
    import optimum_alpha  # noqa: F401
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    register()
    register()
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["alpha_sparse"] is AlphaSparseConfig
    assert AUTO_QUANTIZER_MAPPING["alpha_sparse"].__name__ == "AlphaSparseHfQuantizer"


# --- atomic writes and argument checks ----------------------------------------------------------


def test_failed_save_leaves_existing_folder_untouched(tmp_path, monkeypatch):
    target = save_pruned(tiny_model(sparsity=0.5), tmp_path / "out", format="dense")
    before = snapshot(target)

    def explode(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(save_module, "build_model_card", explode)
    with pytest.raises(CheckpointError, match="injected"):
        save_pruned(tiny_model(sparsity=0.9), target, format="sparse", overwrite=True)
    assert snapshot(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or backup folder left


def test_failed_first_save_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("optimum_alpha.checkpoint.writers.sparse.compress_folder", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        save_pruned(tiny_model(), tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_checkpoint_and_keeps_files_it_did_not_write(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with pytest.raises(CheckpointError, match="overwrite=True"):
        save_pruned(tiny_model(), target)
    with pytest.raises(CheckpointError, match="not a checkpoint written by optimum-alpha"):
        save_pruned(tiny_model(), target, overwrite=True)  # a foreign folder needs "force"
    assert sorted(os.listdir(target)) == ["stale.txt"]
    save_pruned(tiny_model(), target, overwrite="force")
    assert (target / "stale.txt").read_text() == "old" and (target / "config.json").is_file()
    save_pruned(tiny_model(), target, overwrite=True, format="dense")  # ours now: True is enough
    assert (target / "stale.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bad_targets_and_arguments_raise_checkpoint_errors(tmp_path):
    model = tiny_model()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save_pruned(model, tmp_path / "file")
    with pytest.raises(CheckpointError, match="dense, gguf, sparse"):
        save_pruned(model, tmp_path / "x", format="zip")
    with pytest.raises(CheckpointError, match="JSON-serialisable"):
        save_pruned(model, tmp_path / "x", metadata={"alpha": torch.tensor(1.0)})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pruned(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pruned(tmp_path)
    assert not (tmp_path / "x").exists()


# --- metadata, model card, chart ----------------------------------------------------------------


def test_metadata_card_and_chart(tmp_path):
    folder = save_pruned(tiny_model(), tmp_path / "card", metadata=METADATA)
    data = json.loads((folder / "alpha_pruning.json").read_text())
    assert data["blocks"] == METADATA["blocks"] and data["calibration"] == METADATA["calibration"]
    assert data["library_version"] and data["format"] == "sparse" and data["compressed_modules"] == 14
    assert data["achieved_sparsity"] == pytest.approx(0.7, abs=0.01)
    assert (folder / "alpha_profile.png").read_bytes().startswith(PNG_MAGIC)
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"pruned", "sparse", "alpha-pruning"} <= set(card.data.tags)
    assert "![Block alpha_hill and sparsity by depth](alpha_profile.png)" in card.text
    assert "48.25" in card.text and "magnitude" in card.text and "import optimum_alpha" in card.text


def test_save_without_metadata_still_writes_card_and_layer_report(tmp_path):
    folder = save_pruned(tiny_model(), tmp_path / "plain", format="dense")
    data = json.loads((folder / "alpha_pruning.json").read_text())
    assert len(data["layers"]) == 14 and not (folder / "alpha_profile.png").exists()
    text = (folder / "README.md").read_text()
    assert "tags:" in text and "import optimum_alpha" not in text


def test_plotting_functions_write_pngs(tmp_path):
    profile = plot_block_profile([3.0, 2.5, 4.0], [0.6, 0.5, 0.8], tmp_path / "a" / "profile.png")
    assert profile.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="one per block"):
        plot_block_profile([3.0, 2.5], [0.5], tmp_path / "bad.png")
    torch.manual_seed(0)
    matrix = torch.randn(300, 100)
    eigenvalues = torch.linalg.eigvalsh(matrix.T @ matrix / 300)
    esd = plot_esd_fit(eigenvalues, float(eigenvalues.median()), 3.5, tmp_path / "esd.png", "q_proj")
    assert esd.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="positive"):
        plot_esd_fit(torch.zeros(4), 1.0, 2.0, tmp_path / "none.png", "empty")


# --- real model ---------------------------------------------------------------------------------


@pytest.mark.real_model
def test_smollm2_gguf_pruned_70_round_trips_in_both_formats(tmp_path):
    from optimum_alpha.models import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    prune_by_magnitude(model, 0.7)
    dense = save_pruned(model, tmp_path / "dense", format="dense")
    sparse = save_pruned(model, tmp_path / "sparse", format="sparse")
    assert getattr(model, "hf_quantizer", None) is not None  # the GGUF loader state is restored after saving
    assert folder_bytes(sparse) < 0.6 * folder_bytes(dense)
    for folder in (dense, sparse):
        assert "gguf" not in (folder / "config.json").read_text()
        loaded = load_pruned(folder)
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        assert_same_weights(model, loaded)
        del loaded


def test_alpha_pruner_save_pretrained_writes_a_loadable_folder_with_its_allocation(tmp_path):
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    pruner = AlphaPruner.from_pretrained(tiny_model(sparsity=0.0), show_progress=False)
    config = AlphaPruningConfig(sparsity=0.7, method="magnitude", allocation="alpha", epsilon=0.2)
    pruner.prune(config, show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "pruned", format="sparse")
    data = json.loads((folder / "alpha_pruning.json").read_text())
    sparsities = [block["achieved_sparsity"] for block in data["blocks"]]
    assert len(sparsities) == 2 and sparsities[0] != pytest.approx(sparsities[1], abs=0.05)  # non-uniform
    assert (folder / "alpha_profile.png").is_file()
    loaded = load_pruned(folder)
    assert_same_weights(pruner.model, loaded)
    assert save_module.layer_sparsities(loaded) == pytest.approx(data["layers"], abs=1e-6)
