"""DLP and ATP allocations: their definitions on hand-made scores, the exact budget and the cap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optimum_alpha.atp import atp_allocation
from optimum_alpha.calibration import capture_block_inputs
from optimum_alpha.dlp import block_unimportance, collect_unimportance, dlp_allocation
from optimum_alpha.errors import ConfigError
from optimum_alpha.matrices import PrunableMatrix, model_weights
from optimum_alpha.statistics import InputSquaredNorms


def weighted_mean(values, counts):
    return sum(v * c for v, c in zip(values, counts)) / sum(counts)


def test_dlp_follows_its_rule_on_hand_made_scores():
    # U = 1..4: I = 1 - U/10 = .9 .. .6, I' = (I - .6)/.3 * 2 * .15 = .3 .2 .1 0, sparsity .7 + .15 - I'
    sparsities = dlp_allocation([1.0, 2.0, 3.0, 4.0], [10, 10, 10, 10], 0.7, alpha=0.15)
    assert sparsities == pytest.approx([0.55, 0.65, 0.75, 0.85], abs=1e-12)


@pytest.mark.parametrize("sparsity", [0.6, 0.7, 0.8])
def test_dlp_hits_the_budget_exactly_and_respects_the_cap(sparsity):
    scores = [0.1, 0.5, 0.2, 3.0, 0.05, 0.9]
    counts = [100, 300, 50, 400, 200, 75]
    sparsities = dlp_allocation(scores, counts, sparsity, alpha=0.3, max_sparsity=0.85)
    assert weighted_mean(sparsities, counts) == pytest.approx(sparsity, abs=1e-12)
    assert max(sparsities) <= 0.85 + 1e-12 and min(sparsities) >= 0
    # higher unimportance, never lower sparsity
    order = sorted(range(len(scores)), key=scores.__getitem__)
    assert all(sparsities[a] <= sparsities[b] + 1e-12 for a, b in zip(order, order[1:]))


def test_dlp_refuses_bad_alpha():
    with pytest.raises(ConfigError, match="dlp_alpha"):
        dlp_allocation([1.0, 2.0], [1, 1], 0.5, alpha=0.7)


def test_block_unimportance_is_the_median_of_pooled_wanda_scores():
    torch.manual_seed(0)
    block = nn.ModuleDict({"a": nn.Linear(4, 3, bias=False), "b": nn.Linear(3, 2, bias=False)})
    matrices = [PrunableMatrix("a", 0, block["a"]), PrunableMatrix("b", 0, block["b"])]
    stats = {"a": InputSquaredNorms(), "b": InputSquaredNorms()}
    xa, xb = torch.randn(5, 4), torch.randn(5, 3)
    stats["a"].add_batch(xa)
    stats["b"].add_batch(xb)
    rms_a, rms_b = xa.pow(2).mean(0).sqrt(), xb.pow(2).mean(0).sqrt()
    with torch.no_grad():
        pooled = torch.cat([(block["a"].weight.abs() * rms_a).flatten(), (block["b"].weight.abs() * rms_b).flatten()])
    assert block_unimportance(matrices, stats) == pytest.approx(float(pooled.median()), rel=1e-6)


def test_dlp_scores_come_from_one_dense_pass(tiny_llama, tiny_tokenizer):
    _, blocks = model_weights(tiny_llama)
    modules = tiny_llama.model.layers
    ids = tiny_tokenizer(["the quick brown fox jumps over the lazy dog " * 4] * 2, return_tensors="pt").input_ids
    inputs = capture_block_inputs(tiny_llama, list(modules), ids)
    scores = collect_unimportance(list(modules), [b.matrices for b in blocks], inputs)
    assert len(scores) == len(modules) and all(s > 0 for s in scores)
    assert len(set(scores)) == len(scores)


def test_atp_is_an_arithmetic_progression_around_the_target():
    assert atp_allocation([7] * 5, 0.5, 0.05) == pytest.approx([0.4, 0.45, 0.5, 0.55, 0.6], abs=1e-12)
    assert atp_allocation([7] * 5, 0.5, 0.0) == pytest.approx([0.5] * 5, abs=1e-12)


@pytest.mark.parametrize("beta", [0.01, 0.05, 0.3])
def test_atp_hits_the_budget_exactly_rises_with_depth_and_respects_the_cap(beta):
    counts = [100, 300, 50, 400, 200, 75, 90, 10]
    sparsities = atp_allocation(counts, 0.8, beta, max_sparsity=0.95)
    assert weighted_mean(sparsities, counts) == pytest.approx(0.8, abs=1e-12)
    assert all(b >= a - 1e-12 for a, b in zip(sparsities, sparsities[1:]))
    assert max(sparsities) <= 0.95 + 1e-12 and min(sparsities) >= 0
    free = [(a, b) for a, b in zip(sparsities, sparsities[1:]) if 0 < a and b < 0.95]
    assert all(b - a == pytest.approx(beta, abs=1e-12) for a, b in free)  # the common difference, where unpinned


def test_atp_refuses_bad_beta():
    with pytest.raises(ConfigError, match="atp_beta"):
        atp_allocation([1, 1], 0.5, -0.1)


def _block_targets(report):
    return [b.target_sparsity for b in report.blocks]


def test_dlp_and_atp_prune_a_tiny_model_to_the_exact_budget(tiny_llama, tiny_tokenizer):
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    dense = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, show_progress=False)
    common = dict(sparsity=0.6, method="wanda", nsamples=4, seqlen=64)
    _, dlp = pruner.prune(AlphaPruningConfig(allocation="dlp", **common), show_progress=False)
    assert dlp.target_sparsity == pytest.approx(0.6, abs=1e-9)
    assert dlp.total_sparsity == pytest.approx(0.6, abs=2e-3)
    assert len(set(_block_targets(dlp))) == len(dlp.blocks)  # not uniform
    tiny_llama.load_state_dict(dense)
    _, atp = pruner.prune(AlphaPruningConfig(allocation="atp", atp_beta=0.05, **common), show_progress=False)
    assert _block_targets(atp) == pytest.approx([0.55, 0.6, 0.65], abs=1e-9)


def test_atp_auto_searches_beta_on_heldout_windows(tiny_llama, tiny_tokenizer):
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, show_progress=False)
    config = AlphaPruningConfig(sparsity=0.6, method="magnitude", allocation="atp", atp_beta_grid=(0.0, 0.1),
                                nsamples=4, seqlen=32, heldout=2)
    _, report = pruner.prune(config, show_progress=False)
    search = report.epsilon_search
    assert search["parameter"] == "atp_beta" and search["grid"] == [0.0, 0.1]
    assert search["chosen"] in (0.0, 0.1) and len(search["heldout_perplexity"]) == 2
    best = search["grid"][min(range(2), key=search["heldout_perplexity"].__getitem__)]
    assert search["chosen"] == best
    assert report.config["atp_beta"] == "auto"
    steps = [b - a for a, b in zip(_block_targets(report), _block_targets(report)[1:])]
    assert steps == pytest.approx([best] * 2, abs=1e-9)
    from optimum_alpha.checkpoint.model_card import _calibration_rows

    assert _calibration_rows({}, search)[0].startswith("| ATP β (auto) |")
    with pytest.raises(ConfigError, match="atp_beta='auto' is chosen by prune"):
        pruner.allocate(AlphaPruningConfig(sparsity=0.5, allocation="atp"))
