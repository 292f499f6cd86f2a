"""Pruning inside transformers' ``from_pretrained(quantization_config=AlphaPruningConfig(...))`` (issue 13, item 2):
load -> prune -> ``save_pretrained`` writes the sparse folder -> plain ``from_pretrained`` loads it bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import optimum_alpha  # noqa: F401  (registers alpha_pruning and alpha_sparse with transformers)
from conftest import make_tiny_model
from optimum_alpha import AlphaPruningConfig
from optimum_alpha.checkpoint.prune_on_load import AlphaPruningHfQuantizer
from optimum_alpha.errors import CalibrationDataError

TINY = {"nsamples": 2, "seqlen": 32, "calibration_dataset": "wikitext2"}


@pytest.fixture(scope="module")
def dense_folder(tiny_tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dense")
    make_tiny_model("llama", layers=3).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_config_is_a_transformers_quantization_config():
    from transformers.utils.quantization_config import QuantizationConfigMixin

    config = AlphaPruningConfig(sparsity=0.7, method="magnitude", dataset="wikitext2")
    assert isinstance(config, QuantizationConfigMixin)
    assert config.quant_method == "alpha_pruning"
    assert config.calibration_dataset == "wikitext2"  # GPTQConfig's `dataset=` name works too
    data = json.loads(config.to_json_string())
    assert data["quant_method"] == "alpha_pruning" and data["sparsity"] == 0.7
    assert AlphaPruningConfig.from_dict(data) == config


def test_from_pretrained_prunes_and_save_pretrained_writes_the_sparse_format(dense_folder, tmp_path):
    config = AlphaPruningConfig(sparsity=0.6, method="wanda", allocation="alpha", **TINY)
    model = AutoModelForCausalLM.from_pretrained(dense_folder, quantization_config=config)
    report = model.alpha_pruning_report
    assert report.completed and report.total_sparsity == pytest.approx(0.6, abs=0.01)
    assert len({round(b.target_sparsity, 4) for b in report.blocks}) > 1  # the alpha allocation ran
    # An ordinary dense model now: nothing left that would prune it again or confuse save_pretrained.
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    down = model.model.layers[0].mlp.down_proj.weight
    assert 0.3 < float((down == 0).float().mean()) < 0.95

    out = tmp_path / "pruned"
    out.mkdir()
    (out / "tokenizer_note.txt").write_text("saved before the model")  # save_pretrained keeps other files
    model.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "alpha_sparse" and saved["compressed_modules"]
    assert (out / "alpha_pruning.json").is_file() and (out / "tokenizer_note.txt").is_file()
    card = (out / "README.md").read_text()
    assert "wanda" in card

    loaded = AutoModelForCausalLM.from_pretrained(out)
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(expected) == set(got)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_magnitude_needs_no_tokenizer_and_a_tokenizer_name_is_loaded(dense_folder, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        dense_folder, quantization_config=AlphaPruningConfig(sparsity=0.5, method="magnitude", allocation="uniform")
    )
    assert model.alpha_pruning_report.total_sparsity == pytest.approx(0.5, abs=0.01)
    bare = tmp_path / "no-tokenizer"
    make_tiny_model("llama").save_pretrained(bare)
    with pytest.raises(CalibrationDataError, match="tokenizer"):
        AutoModelForCausalLM.from_pretrained(bare, quantization_config=AlphaPruningConfig(sparsity=0.5, **TINY))
    pruned = AutoModelForCausalLM.from_pretrained(
        bare, quantization_config=AlphaPruningConfig(sparsity=0.5, tokenizer=str(dense_folder), **TINY)
    )
    assert pruned.alpha_pruning_report.completed


def test_a_config_json_claiming_alpha_pruning_is_refused():
    with pytest.raises(ValueError, match="quantization_config=AlphaPruningConfig"):
        AlphaPruningHfQuantizer(AlphaPruningConfig(), pre_quantized=True).validate_environment()


@pytest.mark.real_model
def test_smollm2_pruned_on_load_saves_and_reloads(tmp_path):
    pytest.importorskip("gguf")
    from optimum_alpha.checkpoint import save_pruned
    from optimum_alpha.evaluate import perplexity
    from optimum_alpha.models import load_model

    dense, tokenizer = load_model("smollm2-135m")
    save_pruned(dense, tmp_path / "dense", tokenizer=tokenizer, format="dense")  # GGUF -> safetensors folder
    del dense
    # Magnitude + uniform keeps this short; Wanda, calibration and the alpha allocation through this path are
    # covered on the tiny model above.
    config = AlphaPruningConfig(sparsity=0.5, method="magnitude", allocation="uniform")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", quantization_config=config)
    assert model.alpha_pruning_report.total_sparsity == pytest.approx(0.5, abs=2e-3)
    model.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    weight = "model.layers.5.mlp.down_proj.weight"
    assert torch.equal(model.get_parameter(weight), loaded.get_parameter(weight))
    ppl = perplexity(loaded, tokenizer, seqlen=128, max_windows=1, show_progress=False)
    assert math.isfinite(ppl) and ppl < 1e4
