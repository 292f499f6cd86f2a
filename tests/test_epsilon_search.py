"""epsilon="auto": the sweep scores each ε on held-out calibration-source windows, keeps the best, never reads
the evaluation set, and leaves the dense weights in place between (and after a failed) trials."""

from __future__ import annotations

import argparse

import pytest
import torch

import optimum_alpha.data as data_module
import optimum_alpha.evaluation.perplexity as evaluate_module
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.checkpoint.model_card import build_model_card
from optimum_alpha.commands import prune as prune_cmd
from optimum_alpha.data import sample_calibration
from optimum_alpha.errors import ConfigError
from optimum_alpha.evaluate import window_perplexity

from conftest import make_tiny_model

GRID = (0.1, 0.3, 0.5)
AUTO = {"epsilon": "auto", "epsilon_grid": GRID, "heldout": 2, "nsamples": 2, "seqlen": 32, "sparsity": 0.6}


@pytest.fixture
def no_evaluation_data(monkeypatch):
    """Any read of the evaluation token stream fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("epsilon='auto' read the evaluation set")

    monkeypatch.setattr(data_module, "evaluation_tokens", forbidden)
    monkeypatch.setattr(evaluate_module, "evaluation_tokens", forbidden)


def _pruner(tokenizer) -> AlphaPruner:
    return AlphaPruner.from_pretrained(make_tiny_model("llama", layers=3), tokenizer=tokenizer, show_progress=False)


def test_auto_epsilon_keeps_the_sweeps_best_heldout_perplexity(tiny_tokenizer, no_evaluation_data):
    pruner = _pruner(tiny_tokenizer)
    _, report = pruner.prune(AlphaPruningConfig(**AUTO), show_progress=False)
    search = report.epsilon_search
    assert search["grid"] == list(GRID) and len(search["heldout_perplexity"]) == len(GRID)
    assert search["chosen"] == GRID[min(range(len(GRID)), key=search["heldout_perplexity"].__getitem__)]
    assert len(set(search["heldout_perplexity"])) > 1  # the grid points really prune differently
    assert report.config["epsilon"] == "auto" and report.completed
    final = {k: v.clone() for k, v in pruner.model.state_dict().items()}

    # Each sweep value is what a plain prune with that ε scores on the same held-out windows, and the final
    # model is the plain prune with the chosen ε.
    sample = sample_calibration(tiny_tokenizer, "c4", 2, 32, heldout=2)
    for epsilon, score in zip(GRID, search["heldout_perplexity"]):
        fresh = _pruner(tiny_tokenizer)
        fresh.prune(AlphaPruningConfig(**{**AUTO, "epsilon": epsilon}), show_progress=False)
        assert window_perplexity(fresh.model, sample.heldout) == pytest.approx(score, rel=1e-6)
        if epsilon == search["chosen"]:
            assert all(torch.equal(final[k], v) for k, v in fresh.model.state_dict().items())


def test_heldout_windows_share_no_text_with_the_calibration_windows(tiny_tokenizer):
    for sampling in ("document", "joined"):
        sample = sample_calibration(tiny_tokenizer, "c4", 4, 32, sampling=sampling, heldout=3)
        assert sample.sampling == sampling and sample.heldout.shape == (3, 32)
        plain = sample_calibration(tiny_tokenizer, "c4", 4, 32, sampling=sampling)
        assert torch.equal(sample.ids, plain.ids)  # reserving held-out windows does not move calibration
        grams = {tuple(row[i : i + 20].tolist()) for row in sample.ids for i in range(13)}
        assert not any(tuple(row[i : i + 20].tolist()) in grams for row in sample.heldout for i in range(13))


def test_a_failed_trial_leaves_the_dense_weights(tiny_tokenizer, monkeypatch):
    import optimum_alpha.epsilon_search as search_module

    pruner = _pruner(tiny_tokenizer)
    dense = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    calls = []

    def failing(model, windows, show_progress=False):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 10.0

    monkeypatch.setattr(search_module, "window_perplexity", failing)
    with pytest.raises(KeyboardInterrupt):
        pruner.prune(AlphaPruningConfig(**AUTO), show_progress=False)
    assert all(torch.equal(dense[k], v) for k, v in pruner.model.state_dict().items())


def test_auto_epsilon_from_the_cli_and_config_checks():
    parser = argparse.ArgumentParser()
    prune_cmd.add_arguments(parser)
    args = parser.parse_args(["m", "--epsilon", "auto", "--epsilon-grid", "0.2", "0.4", "--heldout", "3"])
    config = prune_cmd.resolve_config(args)
    assert (config.epsilon, config.epsilon_grid, config.heldout) == ("auto", (0.2, 0.4), 3)
    assert config.searches_epsilon
    assert prune_cmd.resolve_config(parser.parse_args(["m", "--epsilon", "0.25"])).epsilon == 0.25
    assert "one prune per" in parser.format_help().replace("\n", " ") or "prunes" in parser.format_help()
    assert AlphaPruningConfig.from_dict(config.to_dict()).epsilon_grid == (0.2, 0.4)
    with pytest.raises(ConfigError, match="'auto'"):
        AlphaPruningConfig(epsilon="often")
    with pytest.raises(ConfigError, match="epsilon_grid is empty"):
        AlphaPruningConfig(epsilon="auto", epsilon_grid=())
    with pytest.raises(ConfigError, match="epsilon must be in"):
        AlphaPruningConfig(epsilon="auto", epsilon_grid=(0.2, 1.5))


def test_card_states_the_sweep_and_the_calibration():
    metadata = {
        "config": {"method": "wanda", "allocation": "alpha", "sparsity": 0.5, "epsilon": "auto"},
        "calibration": {"windows": 128, "seqlen": 2048, "sampling": "document", "source": "c4 (shipped)"},
        "epsilon_search": {"grid": [0.1, 0.2], "heldout_perplexity": [30.5, 28.25], "chosen": 0.2,
                           "heldout_windows": 8, "heldout_source": "c4 (shipped)"},
    }
    text = str(build_model_card(metadata, fmt="dense", chart_file=None))
    assert "128 windows x 2048 tokens, document sampling, from c4 (shipped)" in text
    assert "| ε (auto) | 0.2" in text and "0.1: 30.50, 0.2: 28.25" in text


def test_cli_prune_with_auto_epsilon_prints_and_saves_the_sweep(tmp_path, tiny_tokenizer, capsys,
                                                               no_evaluation_data):
    import json

    folder = tmp_path / "tiny"
    make_tiny_model("llama", layers=2).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    parser = argparse.ArgumentParser()
    prune_cmd.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([str(folder), "--sparsity", "0.6", "--epsilon", "auto", "--epsilon-grid", "0.1",
                              "0.5", "--heldout", "2", "--nsamples", "2", "--seqlen", "32", "--output", str(out)])
    args.quiet, args.verbose = False, False  # set by the top-level parser
    assert prune_cmd.run(args) == 0
    assert "epsilon auto: chose" in capsys.readouterr().out
    saved = json.loads((out / "alpha_pruning.json").read_text())
    assert saved["epsilon_search"]["grid"] == [0.1, 0.5] and saved["config"]["epsilon"] == "auto"
    assert saved["calibration"]["sampling"] == "document"
    assert "ε (auto)" in (out / "README.md").read_text()
