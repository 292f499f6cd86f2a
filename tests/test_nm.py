"""N:M sparsity: the pattern holds in every group for every method, and mixed N:M follows the allocation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optimum_alpha import AlphaPruningConfig
from optimum_alpha.data import load_texts
from optimum_alpha.errors import ConfigError
from optimum_alpha.nm import mixed_nm_counts
from optimum_alpha.pruner import AlphaPruner


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(load_texts("c4")[:8]))
    return path


def kept_per_group(pruner: AlphaPruner, m: int) -> dict[int, set[int]]:
    """For each block, the set of kept-weight counts over all groups of M of all its layers."""
    found = {}
    for i, block in enumerate(pruner.block_weights()):
        counts: set[int] = set()
        for matrix in block.matrices:
            w = matrix.read()
            counts |= set((w != 0).reshape(w.shape[0], -1, m).sum(dim=2).unique().tolist())
        found[i] = counts
    return found


def config(calibration_file, **kwargs) -> AlphaPruningConfig:
    return AlphaPruningConfig(nsamples=2, seqlen=24, calibration_dataset=calibration_file, blocksize=16, **kwargs)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern,sparsity", [("2:4", 0.5), ("4:8", 0.5), ("2:8", 0.75)])
def test_fixed_pattern_in_every_group(tiny_model, tiny_tokenizer, calibration_file, method, pattern, sparsity):
    pruner = AlphaPruner.from_pretrained(tiny_model, tokenizer=tiny_tokenizer, run_analysis=False,
                                         show_progress=False)
    _, report = pruner.prune(config(calibration_file, method=method, nm=pattern), show_progress=False)
    n, m = (int(x) for x in pattern.split(":"))
    assert all(counts == {n} for counts in kept_per_group(pruner, m).values())
    assert report.total_sparsity == pytest.approx(sparsity, abs=1e-12)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_mixed_n8_follows_the_alpha_allocation(tiny_llama, tiny_tokenizer, calibration_file, method):
    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, show_progress=False)
    _, report = pruner.prune(config(calibration_file, method=method, nm="mixed:8", sparsity=0.625, epsilon=0.5),
                             show_progress=False)
    per_block = kept_per_group(pruner, 8)
    assert all(len(counts) == 1 for counts in per_block.values())  # one N per block
    n = [next(iter(per_block[i])) for i in range(len(per_block))]
    assert len(set(n)) > 1  # the allocation really mixes N
    assert sum(n) == 3 * 3  # (1 - 0.625) * 8 per block on average: exact with 3 equal blocks
    assert report.total_sparsity == pytest.approx(0.625, abs=1e-12)
    scores = [b.score for b in report.blocks]  # heavier tail (lower alpha) keeps more weights
    by_score = sorted(range(3), key=lambda i: scores[i])
    assert all(n[a] >= n[b] for a, b in zip(by_score, by_score[1:]))


def test_mixed_with_uniform_allocation_is_the_plain_pattern(tiny_llama, tiny_tokenizer, calibration_file):
    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, run_analysis=False,
                                         show_progress=False)
    targets, _ = pruner.allocate(config(calibration_file, allocation="uniform", nm="mixed:8", sparsity=0.5))
    assert set(targets.values()) == {0.5}


def test_rounding_keeps_the_continuous_order_and_the_budget():
    assert mixed_nm_counts([0.5] * 4, [10] * 4, 0.5, 8) == [4, 4, 4, 4]
    assert mixed_nm_counts([0.40, 0.55, 0.70, 0.85], [10] * 4, 0.625, 8) == [5, 4, 2, 1]
    # 3.2 kept per group on average over 5 blocks: one block gets 4, the most under-served one (the first).
    assert mixed_nm_counts([0.58, 0.61, 0.6, 0.6, 0.61], [1] * 5, 0.6, 8) == [4, 3, 3, 3, 3]
    # Far outside [1/M, (M - 1)/M]: clamped to N in [1, M - 1], then the budget is restored.
    counts = mixed_nm_counts([0.0, 1.0, 0.5], [1, 1, 1], 0.5, 8)
    assert counts[0] == 7 and counts[1] == 1 and sum(counts) == 12


@settings(max_examples=80, deadline=None)
@given(data=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 50)), min_size=1, max_size=10),
       m=st.sampled_from([4, 8, 16]), fraction=st.floats(0.0, 1.0))
def test_rounding_meets_the_budget_to_half_a_unit(data, m, fraction):
    sparsities, sizes = [s for s, _ in data], [d for _, d in data]
    sparsity = 1 / m + fraction * (m - 2) / m
    counts = mixed_nm_counts(sparsities, sizes, sparsity, m)
    assert all(1 <= n <= m - 1 for n in counts)
    kept = sum(n * d for n, d in zip(counts, sizes))
    assert abs(kept - (1 - sparsity) * m * sum(sizes)) <= max(sizes) / 2 + 1e-9


def test_invalid_patterns_name_the_fix(tiny_llama, tiny_tokenizer, calibration_file):
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0.1250, 0.8750\]"):
        AlphaPruningConfig(nm="mixed:8", sparsity=0.95)
    with pytest.raises(ConfigError, match="mixed:M"):
        AlphaPruningConfig(nm="mixed:eight")
    with pytest.raises(ConfigError, match="0 < N < M"):
        AlphaPruningConfig(nm="4:4")
    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, run_analysis=False,
                                         show_progress=False)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(ConfigError, match="multiple of M"):
        pruner.prune(config(calibration_file, method="wanda", nm="mixed:6", sparsity=0.5), show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())  # checked before pruning
