"""AlphaPruningConfig validation and serialisation; calibration/evaluation data and the perplexity protocol."""

from __future__ import annotations

import json
import math

import pytest
import torch

from optimum_alpha import AlphaPruningConfig
from optimum_alpha.data import calibration_windows, evaluation_tokens, load_texts, shipped_path
from optimum_alpha.errors import CalibrationDataError, ConfigError
from optimum_alpha.evaluate import perplexity


def test_config_round_trips_through_dict_and_json(tmp_path):
    config = AlphaPruningConfig(sparsity=0.7, method="magnitude", allocation="uniform", epsilon=0.2, nm="2:4")
    assert AlphaPruningConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.json"
    config.to_json_file(path)
    assert json.loads(path.read_text())["sparsity"] == 0.7
    assert AlphaPruningConfig.from_json_file(path) == config
    assert config.nm_pattern == (2, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.5}, "sparsity must be in"),
        ({"sparsity": -0.1}, "sparsity must be in"),
        ({"method": "obs"}, "Unknown method 'obs'; choose one of alps, magnitude, sparsegpt, wanda"),
        ({"allocation": "global"}, "Unknown allocation"),
        ({"metric": "alpha"}, "Unknown metric"),
        ({"epsilon": 1.2}, "epsilon must be in"),
        ({"nm": "4:2"}, "needs 0 < N < M"),
        ({"nm": "two:four"}, "must look like 'N:M'"),
        ({"nsamples": 0}, "nsamples must be"),
        ({"granularity": "row"}, "Unknown granularity"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AlphaPruningConfig(**kwargs)


def test_config_rejects_unknown_fields(tmp_path):
    with pytest.raises(ConfigError, match="Unknown config field"):
        AlphaPruningConfig.from_dict({"sparsity": 0.5, "sparsty": 0.7})
    with pytest.raises(ConfigError, match="does not exist"):
        AlphaPruningConfig.from_json_file(tmp_path / "missing.json")


def test_shipped_wikitext_is_the_upstream_split():
    rows = load_texts("wikitext2")
    assert len(rows) == 4358
    assert len(load_texts("c4")) == 200
    assert shipped_path("wikitext2").is_file()


def test_calibration_windows_are_deterministic_disjoint_text(tiny_tokenizer):
    first = calibration_windows(tiny_tokenizer, "c4", nsamples=6, seqlen=64, seed=0)
    again = calibration_windows(tiny_tokenizer, "c4", nsamples=6, seqlen=64, seed=0)
    other = calibration_windows(tiny_tokenizer, "c4", nsamples=6, seqlen=64, seed=1)
    assert first.shape == (6, 64) and first.dtype == torch.long
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json", ".parquet"])
def test_local_files_of_every_supported_format(tmp_path, tiny_tokenizer, suffix):
    rows = load_texts("c4")[:20]
    path = tmp_path / f"calib{suffix}"
    if suffix == ".txt":
        path.write_text("\n\n".join(rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({"text": r}) for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps([{"text": r} for r in rows]))
    else:
        from datasets import Dataset

        Dataset.from_dict({"text": rows}).to_parquet(str(path))
    windows = calibration_windows(tiny_tokenizer, path, nsamples=2, seqlen=32)
    assert windows.shape == (2, 32)


def test_bad_calibration_sources(tmp_path, tiny_tokenizer):
    with pytest.raises(CalibrationDataError, match="neither a shipped dataset"):
        load_texts(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(CalibrationDataError, match="contains no text"):
        load_texts(empty)
    short = tmp_path / "short.txt"
    short.write_text("only a few words here")
    with pytest.raises(CalibrationDataError, match="nsamples x seqlen = 4 x 128"):
        calibration_windows(tiny_tokenizer, short, nsamples=4, seqlen=128)


def test_perplexity_follows_the_standard_protocol(tiny_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model("llama")
    ids = evaluation_tokens(tiny_tokenizer, "wikitext2")
    joined = "\n\n".join(load_texts("wikitext2"))
    assert torch.equal(ids, tiny_tokenizer(joined, return_tensors="pt").input_ids[0])
    seqlen, windows = 32, 3
    losses = []
    with torch.no_grad():
        for i in range(windows):
            window = ids[i * seqlen : (i + 1) * seqlen].unsqueeze(0)
            losses.append(float(model(window, labels=window).loss))
    expected = math.exp(sum(losses) / windows)
    measured = perplexity(model, tiny_tokenizer, seqlen=seqlen, max_windows=windows, show_progress=False)
    assert measured == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        perplexity(model, None)


def test_embedded_model_alias_records_its_hub_id():
    from optimum_alpha.models import SMOLLM2_HUB_ID, base_model_id

    assert base_model_id("smollm2-135m") == SMOLLM2_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("org/model") == "org/model"
    assert base_model_id(None) is None
