"""Allocation: exact parameter-weighted budget, bounds, ordering (property-based with hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimum_alpha.allocation import alpha_allocation, alpha_ratios
from optimum_alpha.errors import ConfigError

units = st.integers(min_value=2, max_value=40)


@st.composite
def allocation_problems(draw):
    n = draw(units)
    scores = draw(st.lists(st.floats(1.0, 12.0), min_size=n, max_size=n))
    counts = draw(st.lists(st.integers(1, 10_000_000), min_size=n, max_size=n))
    sparsity = draw(st.floats(0.0, 0.95))
    epsilon = draw(st.floats(0.0, 0.9))
    max_sparsity = draw(st.floats(max(sparsity, 0.5), 1.0))
    return scores, counts, sparsity, epsilon, max_sparsity


@settings(max_examples=300, deadline=None)
@given(allocation_problems())
def test_weighted_total_is_exact_and_bounds_hold(problem):
    scores, counts, sparsity, epsilon, max_sparsity = problem
    result = alpha_allocation(scores, counts, sparsity, epsilon=epsilon, max_sparsity=max_sparsity)
    total = sum(counts)
    assert abs(sum(s * d for s, d in zip(result, counts)) / total - sparsity) <= 1e-9
    assert all(-1e-12 <= s <= max_sparsity + 1e-12 for s in result)


@settings(max_examples=200, deadline=None)
@given(allocation_problems())
def test_ordering_follows_scores(problem):
    scores, counts, sparsity, epsilon, max_sparsity = problem
    result = alpha_allocation(scores, counts, sparsity, epsilon=epsilon, max_sparsity=max_sparsity)
    for i in range(len(scores)):
        for j in range(len(scores)):
            if scores[i] < scores[j]:
                assert result[i] <= result[j] + 1e-12


@settings(max_examples=100, deadline=None)
@given(units, st.floats(0.0, 0.95), st.floats(0.0, 0.9))
def test_uniform_scores_give_uniform_sparsity(n, sparsity, epsilon):
    result = alpha_allocation([3.0] * n, list(range(1, n + 1)), sparsity, epsilon=epsilon)
    assert all(s == pytest.approx(sparsity, abs=1e-12) for s in result)


def test_unbounded_case_is_the_papers_equation_4():
    scores, counts = [2.0, 3.0, 4.0, 5.0], [10, 20, 30, 40]
    ratios = alpha_ratios(scores, 0.2)
    assert ratios == pytest.approx([0.8, 0.8 + 0.4 / 3, 0.8 + 0.8 / 3, 1.2])
    result = alpha_allocation(scores, counts, 0.5, epsilon=0.2)
    eta = 0.5 * sum(counts) / sum(r * d for r, d in zip(ratios, counts))
    assert result == pytest.approx([eta * r for r in ratios], rel=1e-12)


def test_block_over_the_bound_is_pinned_and_the_rest_redistributed():
    """An outlier score (like SmolLM2's block 10) would get > 100 %: it is pinned at max_sparsity."""
    scores = [2.5, 3.0, 3.5, 4.0, 7.2]
    counts = [100] * 5
    result = alpha_allocation(scores, counts, 0.7, epsilon=0.3, max_sparsity=0.9)
    assert result[-1] == pytest.approx(0.9)
    assert sum(result) / 5 == pytest.approx(0.7, abs=1e-12)
    unbounded = alpha_allocation(scores, counts, 0.7, epsilon=0.3, max_sparsity=1.0)
    assert unbounded[-1] > 0.9 and result[0] > unbounded[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"sparsity": -0.1}, "sparsity must be in"),
        ({"epsilon": 1.0}, "epsilon must be in"),
        ({"epsilon": -0.2}, "epsilon must be in"),
        ({"sparsity": 0.995}, "exceeds max_sparsity"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    args = {"scores": [1.0, 2.0], "param_counts": [1, 1], "sparsity": 0.5, "epsilon": 0.3}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        alpha_allocation(**args)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 3.0)), min_size=2, max_size=30),
    st.floats(0.05, 0.6),
    st.floats(0.0, 0.3),
    st.floats(0.7, 1.0),
    st.data(),
)
def test_fit_to_budget_with_both_bounds_is_exact(ratios, sparsity, min_sparsity, max_sparsity, data):
    """Units pinned at the lower and the upper bound in the same problem: the total is still exact."""
    from optimum_alpha.allocation import fit_to_budget

    counts = data.draw(st.lists(st.integers(1, 1000), min_size=len(ratios), max_size=len(ratios)))
    sparsity = max(sparsity, min_sparsity)
    if not any(r > 0 for r in ratios):
        return
    reachable = sum(d * (max_sparsity if r > 0 else min_sparsity) for r, d in zip(ratios, counts)) / sum(counts)
    if sparsity > reachable:
        with pytest.raises(ConfigError, match="cannot be met"):
            fit_to_budget(ratios, counts, sparsity, max_sparsity, min_sparsity)
        return
    result = fit_to_budget(ratios, counts, sparsity, max_sparsity, min_sparsity)
    assert abs(sum(s * d for s, d in zip(result, counts)) / sum(counts) - sparsity) <= 1e-9
    assert all(min_sparsity - 1e-12 <= s <= max_sparsity + 1e-12 for s in result)


def test_negative_ratios_are_rejected():
    from optimum_alpha.allocation import fit_to_budget

    with pytest.raises(ConfigError, match="non-negative"):
        fit_to_budget([-0.2, 1.0], [1, 1], 0.5)
