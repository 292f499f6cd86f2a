"""Property-based tests (hypothesis) of the allocation and of the mask builders, over random shapes and targets.

test_allocation.py already checks the exact budget, the bounds and the ordering; here: invariances of the
AlphaPruning mapping (affine changes of the scores, permutations, scaled parameter counts), the ε spread when
nothing is pinned, monotonicity in the target, and the N:M / row / matrix masks on random and tied scores.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from optimum_alpha.allocation import alpha_allocation, alpha_ratios
from optimum_alpha.errors import ConfigError
from optimum_alpha.pruning.magnitude import MagnitudePruner
from optimum_alpha.pruning.masks import count_to_prune, matrix_mask, nm_mask, row_mask


@st.composite
def problems(draw, max_sparsity=st.just(1.0)):
    n = draw(st.integers(2, 24))
    scores = draw(st.lists(st.floats(0.5, 15.0), min_size=n, max_size=n))
    counts = draw(st.lists(st.integers(1, 5_000_000), min_size=n, max_size=n))
    sparsity = draw(st.floats(0.0, 0.9))
    epsilon = draw(st.floats(0.0, 0.95))
    return scores, counts, sparsity, epsilon, max(draw(max_sparsity), sparsity)


def close(a: list[float], b: list[float], tol: float = 1e-9) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b)) and len(a) == len(b)


@settings(max_examples=150, deadline=None)
@given(problems(st.floats(0.5, 1.0)), st.floats(0.01, 100.0), st.floats(-50.0, 50.0))
def test_allocation_ignores_affine_changes_of_the_scores(problem, scale, shift):
    scores, counts, sparsity, epsilon, max_sparsity = problem
    base = alpha_allocation(scores, counts, sparsity, epsilon=epsilon, max_sparsity=max_sparsity)
    moved = alpha_allocation([scale * q + shift for q in scores], counts, sparsity, epsilon=epsilon,
                     max_sparsity=max_sparsity)
    assert close(base, moved, 1e-7)


@settings(max_examples=150, deadline=None)
@given(problems(st.floats(0.5, 1.0)), st.randoms(use_true_random=False), st.integers(1, 1000))
def test_allocation_follows_its_units_and_ignores_the_count_unit(problem, rng, factor):
    scores, counts, sparsity, epsilon, max_sparsity = problem
    base = alpha_allocation(scores, counts, sparsity, epsilon=epsilon, max_sparsity=max_sparsity)
    order = list(range(len(scores)))
    rng.shuffle(order)
    permuted = alpha_allocation([scores[i] for i in order], [counts[i] for i in order], sparsity, epsilon=epsilon, max_sparsity=max_sparsity)
    assert close(permuted, [base[i] for i in order])
    scaled = alpha_allocation(scores, [c * factor for c in counts], sparsity, epsilon=epsilon,
                      max_sparsity=max_sparsity)
    assert close(scaled, base)


@settings(max_examples=150, deadline=None)
@given(problems())
def test_unpinned_allocation_stays_within_the_epsilon_band(problem):
    scores, counts, sparsity, epsilon, _ = problem
    result = alpha_allocation(scores, counts, sparsity, epsilon=epsilon, max_sparsity=1.0)
    assume(sparsity > 0 and max(result) < 1.0)  # nothing pinned: the result is η times the eq. 4 ratios
    ratios = alpha_ratios(scores, epsilon)
    eta = result[0] / ratios[0]
    assert close(result, [eta * r for r in ratios], 1e-9)
    assert max(result) <= min(result) * (1 + epsilon) / (1 - epsilon) + 1e-9


@settings(max_examples=150, deadline=None)
@given(problems(st.floats(0.6, 1.0)), st.floats(0.0, 0.5))
def test_a_higher_target_never_lowers_any_unit(problem, step):
    scores, counts, sparsity, epsilon, max_sparsity = problem
    higher = min(sparsity + step, max_sparsity, 0.999)
    low = alpha_allocation(scores, counts, sparsity, epsilon=epsilon, max_sparsity=max_sparsity)
    high = alpha_allocation(scores, counts, higher, epsilon=epsilon, max_sparsity=max_sparsity)
    assert all(h >= lo - 1e-9 for h, lo in zip(high, low))


# ------------------------------------------------------------------------------------------ masks


@st.composite
def score_matrices(draw, m=None):
    """Random (rows, groups*m) scores; ``tied`` draws from 3 values so most groups hold ties."""
    m = m if m is not None else draw(st.integers(2, 16))
    rows, groups = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):
        scores = torch.randint(0, 3, (rows, groups * m), generator=generator).float()
    else:
        scores = torch.randn(rows, groups * m, generator=generator).abs()
    return scores, m


@settings(max_examples=200, deadline=None)
@given(score_matrices(), st.data())
def test_nm_mask_keeps_the_n_largest_of_every_group(case, data):
    scores, m = case
    n = data.draw(st.integers(1, m - 1))
    mask = nm_mask(scores, n, m)
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    groups, removed = scores.reshape(scores.shape[0], -1, m), mask.reshape(scores.shape[0], -1, m)
    assert torch.all(removed.sum(dim=2) == m - n)
    kept_min = groups.masked_fill(removed, float("inf")).amin(dim=2)
    removed_max = groups.masked_fill(~removed, float("-inf")).amax(dim=2)
    assert torch.all(kept_min >= removed_max)
    # deterministic and rank-based: a monotone transform of the scores gives the same mask, ties included
    assert torch.equal(nm_mask(scores, n, m), mask)
    assert torch.equal(nm_mask(scores * 3.0 + 1.0, n, m), mask)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 16), st.integers(1, 6), st.integers(1, 6), st.data())
def test_nm_ties_are_broken_by_position(m, rows, groups, data):
    n = data.draw(st.integers(1, m - 1))
    mask = nm_mask(torch.ones(rows, groups * m), n, m).reshape(rows, groups, m)
    expected = torch.arange(m) < m - n  # the first M - N positions of every group go
    assert torch.equal(mask, expected.expand(rows, groups, m))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 16), st.integers(1, 40), st.data())
def test_nm_rejects_groups_that_do_not_divide_or_do_not_keep(m, cols, data):
    n = data.draw(st.integers(1, m - 1))
    scores = torch.rand(3, cols)
    if cols % m:
        with pytest.raises(ConfigError, match=f"multiple of M, but it has {cols}"):
            nm_mask(scores, n, m)
    else:
        assert int(nm_mask(scores, n, m).sum()) == 3 * (cols // m) * (m - n)
    for bad_n in (0, m, m + 1):
        with pytest.raises(ConfigError, match="needs 0 < N < M"):
            nm_mask(torch.rand(2, m), bad_n, m)


@settings(max_examples=150, deadline=None)
@given(score_matrices(m=1), st.floats(0.0, 1.0))
def test_row_and_matrix_masks_remove_the_exact_count(case, sparsity):
    scores, _ = case
    rows, cols = scores.shape
    per_row = row_mask(scores, sparsity)
    assert torch.all(per_row.sum(dim=1) == count_to_prune(cols, sparsity))
    whole = matrix_mask(scores, sparsity)
    assert int(whole.sum()) == count_to_prune(scores.numel(), sparsity)
    if 0 < int(whole.sum()) < scores.numel():
        assert float(scores[~whole].min()) >= float(scores[whole].max())


@settings(max_examples=100, deadline=None)
@given(score_matrices(), st.data())
def test_magnitude_nm_pruning_leaves_n_nonzeros_per_group(case, data):
    scores, m = case
    n = data.draw(st.integers(1, m - 1))
    weight = (scores + 0.1) * torch.where(torch.rand(scores.shape) < 0.5, -1.0, 1.0)  # no zero to start with
    pruned = MagnitudePruner("w").prune(weight, 0.0, (n, m))
    kept = (pruned != 0).reshape(weight.shape[0], -1, m).sum(dim=2)
    assert torch.all(kept == n)
    assert torch.equal(pruned[pruned != 0], weight[pruned != 0])
