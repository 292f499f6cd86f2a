"""OWL allocation: outlier ratios from the dense model, exact bounded budget, outliers get lower sparsity."""

from __future__ import annotations

import pytest
import torch

from optimum_alpha.matrices import PrunableMatrix, model_weights
from optimum_alpha.statistics import InputSquaredNorms
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from optimum_alpha import AlphaPruningConfig
from optimum_alpha.calibration import capture_block_inputs
from optimum_alpha.data import calibration_windows, load_texts
from optimum_alpha.errors import AlphaPruningError, ConfigError
from optimum_alpha.model_utils import find_blocks
from optimum_alpha.owl import block_outlier_ratio, collect_outlier_ratios, owl_allocation
from optimum_alpha.pruner import AlphaPruner


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(load_texts("c4")[:8]))
    return path


def test_equal_blocks_reproduce_the_owl_rule():
    ratios = [0.01, 0.03, 0.02, 0.05]
    got = owl_allocation(ratios, [100] * 4, 0.6, lam=0.08)
    spread = [(d - 0.01) / 0.04 * 0.16 for d in ratios]
    expected = [0.6 + sum(spread) / 4 - d for d in spread]
    assert got == pytest.approx(expected, abs=1e-12)
    assert max(got) - min(got) == pytest.approx(0.16)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.floats(0.0, 0.2), st.integers(1, 10_000)), min_size=1, max_size=12),
    sparsity=st.floats(0.0, 0.95),
    lam=st.floats(0.0, 0.5),
)
def test_weighted_total_is_exact_and_bounded(data, sparsity, lam):
    ratios, counts = [d for d, _ in data], [c for _, c in data]
    got = owl_allocation(ratios, counts, sparsity, lam=lam, max_sparsity=0.97)
    total = sum(s * c for s, c in zip(got, counts)) / sum(counts)
    assert total == pytest.approx(sparsity, abs=1e-9)
    assert all(-1e-12 <= s <= 0.97 + 1e-12 for s in got)
    # More outliers never means more sparsity.
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    assert all(got[a] >= got[b] - 1e-12 for a, b in zip(order, order[1:]))


def test_more_outliers_gives_strictly_lower_sparsity():
    got = owl_allocation([0.02, 0.10, 0.05], [300, 100, 200], 0.7)
    assert got[1] < got[2] < got[0]


def test_invalid_lambda_is_a_config_error():
    with pytest.raises(ConfigError, match="owl_lambda"):
        owl_allocation([0.1, 0.2], [1, 1], 0.5, lam=0.7)
    with pytest.raises(ConfigError, match="owl_threshold"):
        AlphaPruningConfig(owl_threshold=-1)


def test_outlier_ratio_pools_all_layers_of_a_block():
    first, second = nn.Linear(4, 2, bias=False), nn.Linear(4, 3, bias=False)
    first.weight.data.fill_(1.0)
    second.weight.data.fill_(1.0)
    second.weight.data[0, 0] = 100.0  # one huge score among 20: mean = (19 + 100) / 20 = 5.95
    norms = {"a": InputSquaredNorms(), "b": InputSquaredNorms()}
    for statistic in norms.values():
        statistic.add_batch(torch.ones(1, 4))
    matrices = [PrunableMatrix("a", 0, first), PrunableMatrix("b", 0, second)]
    assert block_outlier_ratio(matrices, norms, threshold=5.0) == pytest.approx(1 / 20)
    assert block_outlier_ratio(matrices, norms, threshold=20.0) == 0.0
    # A large input norm makes a whole column of scores stand out, in both layers.
    for statistic in norms.values():
        statistic.sums = torch.tensor([1.0, 1.0, 1.0, 400.0])  # squared norms: column 3 has norm 20
    second.weight.data[0, 0] = 1.0
    assert block_outlier_ratio(matrices, norms, threshold=3.0) == pytest.approx(5 / 20)


def dense_reference_ratios(model: nn.Module, ids: torch.Tensor, threshold: float) -> list[float]:
    """Outlier ratios from hooks on a plain full forward of the dense model (no block replay)."""
    _, blocks = model_weights(model)
    norms: dict[str, InputSquaredNorms] = {}
    handles = []
    for block in blocks:
        for matrix in block.matrices:
            norms[matrix.name] = InputSquaredNorms()
            handles.append(matrix.module.register_forward_hook(
                lambda module, args, output, s=norms[matrix.name]: s.add_batch(args[0])))
    with torch.no_grad():
        for window in ids:
            model(window.unsqueeze(0), use_cache=False)
    for handle in handles:
        handle.remove()
    return [block_outlier_ratio(block.matrices, norms, threshold) for block in blocks]


def test_sequential_pass_sees_the_dense_activations(tiny_model, tiny_tokenizer, calibration_file):
    ids = calibration_windows(tiny_tokenizer, calibration_file, 2, 24, seed=0)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    _, blocks = find_blocks(tiny_model)
    inputs = capture_block_inputs(tiny_model, blocks, ids)
    matrices = [block.matrices for block in model_weights(tiny_model)[1]]
    ratios = collect_outlier_ratios(blocks, matrices, inputs, threshold=2.0)
    assert ratios == pytest.approx(dense_reference_ratios(tiny_model, ids, 2.0), rel=1e-5, abs=1e-6)
    assert any(r > 0 for r in ratios)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())


def test_pipeline_with_owl_allocation(tiny_llama, tiny_tokenizer, calibration_file):
    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, run_analysis=False,
                                         show_progress=False)
    config = AlphaPruningConfig(sparsity=0.6, method="wanda", allocation="owl", owl_threshold=2.0, owl_lambda=0.1,
                                nsamples=2, seqlen=24, calibration_dataset=calibration_file)
    _, report = pruner.prune(config, show_progress=False)
    assert report.total_sparsity == pytest.approx(0.6, abs=2e-3)
    scores = [b.score for b in report.blocks]
    targets = [b.target_sparsity for b in report.blocks]
    assert len(set(scores)) == 3  # real, distinct outlier ratios
    most, least = scores.index(max(scores)), scores.index(min(scores))
    assert targets[most] < targets[least]
    assert targets[least] - targets[most] == pytest.approx(0.2, abs=1e-9)  # spread 2λ with equal blocks


def test_owl_without_tokenizer_names_the_fix(tiny_llama):
    pruner = AlphaPruner.from_pretrained(tiny_llama, run_analysis=False, show_progress=False)
    with pytest.raises(AlphaPruningError, match="tokenizer="):
        pruner.allocate(AlphaPruningConfig(allocation="owl", method="magnitude"))
