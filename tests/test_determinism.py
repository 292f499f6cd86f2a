"""Determinism and round trips.

* Same config and seed: bitwise-identical masks, weights and reports across runs, for every method.
* Thread count: magnitude and Wanda are bitwise identical with 1 thread and with several; SparseGPT is
  bitwise reproducible at a fixed thread count, and across thread counts agrees to float32 rounding with the
  same per-layer sparsity (its Cholesky/matmul reductions are split differently).
* save -> load is bitwise for every weight, with the same per-layer sparsity, in both checkpoint formats.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from optimum_alpha import AlphaPruner, AlphaPruningConfig, load_pruned
from optimum_alpha.checkpoint.save import METADATA_FILE, layer_sparsities
from optimum_alpha.data import load_texts


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> Path:
    """Eight C4 documents, one per row, so that the seed's shuffle changes which text is used."""
    path = tmp_path_factory.mktemp("calibration") / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"text": row}) for row in load_texts("c4")[:8]))
    return path


@contextmanager
def threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prune(arch: str, method: str, calibration_file: Path, tokenizer, seed: int = 0, **overrides):
    """A fresh tiny model (always the same random weights) pruned with the AlphaPruning allocation."""
    model = make_tiny_model(arch, seed=7, layers=2)
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False)
    config = AlphaPruningConfig(method=method, sparsity=0.6, nsamples=2, seqlen=24, seed=seed,
                                calibration_dataset=calibration_file, **overrides)
    _, report = pruner.prune(config, show_progress=False)
    return pruner, report


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names whose tensors differ in any bit (dtype, shape, value or sign of zero)."""
    assert a.keys() == b.keys()
    return [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8))]


def masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v == 0 for k, v in state.items() if v.dim() == 2}


@pytest.mark.parametrize("method, arch", [("magnitude", "gpt2"), ("wanda", "opt"), ("sparsegpt", "llama")])
def test_same_config_and_seed_is_bitwise_identical(method, arch, calibration_file, tiny_tokenizer):
    first, report1 = prune(arch, method, calibration_file, tiny_tokenizer)
    second, report2 = prune(arch, method, calibration_file, tiny_tokenizer)
    a, b = weights(first.model), weights(second.model)
    assert differing(a, b) == []
    assert all(torch.equal(m, masks(b)[k]) for k, m in masks(a).items())
    assert report1.layer_targets == report2.layer_targets and report1.layers == report2.layers
    assert [blk.score for blk in report1.blocks] == [blk.score for blk in report2.blocks]
    assert report1.total_sparsity == pytest.approx(0.6, abs=0.02)


def test_calibration_seed_changes_the_wanda_masks(calibration_file, tiny_tokenizer):
    """The seed is really used: otherwise the identity above would hold trivially."""
    one, _ = prune("llama", "wanda", calibration_file, tiny_tokenizer, seed=0)
    other, _ = prune("llama", "wanda", calibration_file, tiny_tokenizer, seed=1)
    assert differing(weights(one.model), weights(other.model))


@pytest.mark.parametrize("method, arch", [("magnitude", "llama"), ("wanda", "llama"), ("wanda", "gpt2")])
def test_magnitude_and_wanda_do_not_depend_on_the_thread_count(method, arch, calibration_file, tiny_tokenizer):
    many = max(2, torch.get_num_threads())
    with threads(1):
        single, report1 = prune(arch, method, calibration_file, tiny_tokenizer)
    with threads(many):
        multi, report2 = prune(arch, method, calibration_file, tiny_tokenizer)
    assert differing(weights(single.model), weights(multi.model)) == []
    assert report1.layers == report2.layers


def test_sparsegpt_across_thread_counts_agrees_to_rounding(calibration_file, tiny_tokenizer):
    with threads(1):
        single, report1 = prune("llama", "sparsegpt", calibration_file, tiny_tokenizer)
    with threads(max(2, torch.get_num_threads())):
        multi, report2 = prune("llama", "sparsegpt", calibration_file, tiny_tokenizer)
    a, b = weights(single.model), weights(multi.model)
    assert report1.layers == report2.layers  # the kept count per layer is exact whatever the threads
    for name in a:
        scale = float(a[name].norm()) or 1.0
        assert float((a[name] - b[name]).norm()) / scale < 1e-3, name
    agreement = [float((m == masks(b)[k]).float().mean()) for k, m in masks(a).items()]
    assert min(agreement) > 0.99


# ------------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("fmt", ["sparse", "dense"])
@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2"])
def test_save_load_round_trip_is_bitwise(arch, fmt, calibration_file, tiny_tokenizer, tmp_path):
    pruner, report = prune(arch, "magnitude", calibration_file, tiny_tokenizer)
    before = weights(pruner.model)
    folder = pruner.save_pretrained(tmp_path / "out", format=fmt)
    loaded = load_pruned(folder)
    after = weights(loaded)
    assert differing(before, after) == []
    saved = json.loads((folder / METADATA_FILE).read_text())
    assert saved["format"] == fmt
    reloaded = layer_sparsities(loaded)
    for name, sparsity in report.layers.items():  # every pruned layer, as reported by the pruner
        assert reloaded[name] == sparsity == saved["layers"][name]
    config = json.loads((folder / "config.json").read_text())
    assert ("quantization_config" in config) == (fmt == "sparse")
