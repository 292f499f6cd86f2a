"""ALPS: lower layer reconstruction error than SparseGPT at high sparsity, exact sparsity and N:M groups,
a PCG refit that keeps the ADMM support and reaches the least-squares optimum on it, pipeline runs."""

from __future__ import annotations

import pytest
import torch

from optimum_alpha import AlphaPruningConfig
from optimum_alpha.data import load_texts
from optimum_alpha.errors import ConfigError
from optimum_alpha.pruner import AlphaPruner
from optimum_alpha.pruning import get_pruner_class
from optimum_alpha.pruning.alps import ALPSPruner, admm_support, pcg_on_support
from optimum_alpha.pruning.masks import matrix_mask

from test_sparsegpt import correlated_inputs  # noqa: E402  (tests/ is on the path, like conftest)


def fed(method: str, x: torch.Tensor, **options):
    """A pruner of ``method`` that has seen the inputs ``x`` in a few batches."""
    pruner = get_pruner_class(method)("layer", **options)
    for chunk in x.split(128):
        pruner.add_batch(chunk.unsqueeze(0))
    return pruner


def error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    """‖WX − ŴX‖² over the tokens of x."""
    return float((x @ (weight - pruned).T).pow(2).sum())


def layer(seed: int, rows: int = 64, cols: int = 96, tokens: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(50 + seed))
    return weight, correlated_inputs(tokens, cols, seed)


# Observed ALPS/SparseGPT error ratios on these layers (seeds 0-2): 0.36-0.38 at 70 %, 0.61-0.64 at 90 %,
# 0.40-0.42 for 2:4. The bounds leave room for platform rounding while still requiring a clear win.
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparsity,nm,bound", [(0.7, None, 0.6), (0.9, None, 0.8), (0.5, (2, 4), 0.7)])
def test_alps_reconstructs_better_than_sparsegpt(seed, sparsity, nm, bound):
    weight, x = layer(seed)
    alps = fed("alps", x).prune(weight, sparsity, nm)
    sparsegpt = fed("sparsegpt", x).prune(weight, sparsity, nm)
    ratio = error(weight, alps, x) / error(weight, sparsegpt, x)
    print(f"seed {seed}, sparsity {sparsity}, nm {nm}: ALPS/SparseGPT error {ratio:.3f}")
    assert ratio < bound


@pytest.mark.parametrize("sparsity", [0.1, 0.33, 0.7, 0.9, 0.97])
def test_achieved_sparsity_is_exact(sparsity):
    weight, x = layer(3, rows=30, cols=50, tokens=300)
    pruned = fed("alps", x).prune(weight, sparsity)
    assert int((pruned == 0).sum()) == round(weight.numel() * sparsity)


def test_nm_groups_hold():
    weight, x = layer(4, rows=16, cols=48, tokens=256)
    pruner = fed("alps", x)
    for n, m in [(2, 4), (3, 8)]:
        kept = (pruner.prune(weight, 0.0, (n, m)) != 0).reshape(16, 48 // m, m).sum(dim=2)
        assert torch.all(kept == n)


def test_large_rho_keeps_the_first_support_and_the_refit_adds_no_nonzero():
    """ρ → ∞ pins W to D from the first step, so the support is the initial projection (|W·S| largest)."""
    weight, x = layer(5, rows=24, cols=40, tokens=400)
    pruner = fed("alps", x, alps_rho=1e9, alps_max_iter=2, alps_pcg_iters=50, alps_pcg_tol=1e-8)
    hessian, scale, normalised = pruner._normalise(weight)
    expected_zeros = matrix_mask(normalised.abs(), 0.8)
    pruned = pruner.prune(weight, 0.8)
    assert torch.equal(pruned == 0, expected_zeros)
    unrefit = fed("alps", x, alps_rho=1e9, alps_max_iter=2, alps_pcg_iters=0).prune(weight, 0.8)
    assert torch.equal(unrefit == 0, expected_zeros)
    assert error(weight, pruned, x) < error(weight, unrefit, x)


def test_pcg_reaches_the_least_squares_optimum_on_the_support():
    weight, x = layer(6, rows=6, cols=20, tokens=200)
    pruner = fed("alps", x)
    hessian, _, w0 = pruner._normalise(weight)
    target = w0 @ hessian
    result = admm_support(hessian, target, w0, lambda v: matrix_mask(v.abs(), 0.6), rho=0.1, max_iter=300)
    refit = pcg_on_support(hessian, target, result.weight, result.mask, iterations=200, tol=1e-7)
    assert torch.all(refit[~result.mask] == 0)
    for row in range(weight.shape[0]):  # exact solution of H_SS w_S = (H w₀)_S, row by row
        support = result.mask[row]
        exact = torch.linalg.solve(hessian[support][:, support].double(), target[row, support].double())
        torch.testing.assert_close(refit[row, support].double(), exact, rtol=1e-3, atol=1e-4)


def test_dtype_device_zero_sparsity_and_dead_inputs():
    weight, x = layer(7, rows=12, cols=32, tokens=256)
    x[:, [3, 17]] = 0.0
    pruner = fed("alps", x)
    assert torch.equal(pruner.prune(weight, 0.0), weight)
    half = pruner.prune(weight.to(torch.bfloat16), 0.5)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert int((half == 0).sum()) == weight.numel() // 2
    assert torch.all(half[:, [3, 17]] == 0)  # inputs that are always zero: their weights go first


def test_gram_is_a_running_mean_and_errors_are_clear():
    x = correlated_inputs(300, 12, 11)
    assert not ALPSPruner("layer").calibrated  # e.g. an expert no token reached: the pipeline falls back
    pruner = fed("alps", x)
    assert pruner.calibrated
    torch.testing.assert_close(pruner.gram, x.T @ x / 300, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="multiple of M"):
        pruner.prune(torch.randn(4, 12), 0.0, (2, 5))
    pruner.free()
    with pytest.raises(RuntimeError, match="calibration"):
        pruner.prune(torch.randn(4, 12), 0.5)
    for option, value in [("alps_rho", 0.0), ("alps_max_iter", 0), ("alps_pcg_iters", -1),
                          ("alps_pcg_tol", 0.0), ("alps_max_iter", 2.5), ("percdamp", -1.0)]:
        with pytest.raises(ConfigError, match=option):
            AlphaPruningConfig(method="alps", **{option: value})


def test_pipeline_prunes_a_tiny_model_with_alps(tiny_model, tiny_tokenizer, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("\n\n".join(load_texts("c4")[:8]))
    pruner = AlphaPruner.from_pretrained(tiny_model, tokenizer=tiny_tokenizer, show_progress=False)
    config = AlphaPruningConfig(sparsity=0.7, method="alps", allocation="alpha", nsamples=2, seqlen=32,
                                calibration_dataset=text)
    _, report = pruner.prune(config, show_progress=False)
    assert report.completed and report.config["method"] == "alps"
    assert report.total_sparsity == pytest.approx(0.7, abs=2e-3)
    assert all(b.achieved_sparsity == pytest.approx(b.target_sparsity, abs=1e-3) for b in report.blocks)
    assert torch.isfinite(tiny_model(torch.randint(0, 300, (1, 16))).logits).all()


def test_model_card_names_alps():
    from optimum_alpha.checkpoint.model_card import build_model_card

    config = AlphaPruningConfig(sparsity=0.7, method="alps", alps_max_iter=50).to_dict()
    card = str(build_model_card({"config": config}, fmt="sparse", chart_file=None))
    assert "using the `alps` pruning criterion" in card
    assert "| pruning method | alps (allocation: alpha) |" in card
    assert AlphaPruningConfig.from_dict(config).alps_max_iter == 50  # alpha_pruning.json keeps the options


@pytest.mark.real_model
def test_smollm2_first_block_with_alps_and_alpha_allocation():
    """The issue's target call on the real model, kept to seconds: blocks 1-29 are ignored (kept dense), so
    ALPS prunes the 7 matrices of block 0 (the full run is in benchmarks/quality.py --table solver)."""
    pytest.importorskip("gguf")
    # The ESD analysis runs at prune time, on the 7 matrices left prunable, not on all 210.
    pruner = AlphaPruner.from_pretrained("smollm2-135m", show_progress=False, run_analysis=False)
    config = AlphaPruningConfig(sparsity=0.7, method="alps", allocation="alpha", nsamples=2, seqlen=128,
                                ignore=[r"re:model\.layers\.([1-9]|[12][0-9])\."])
    model, report = pruner.prune(config, show_progress=False)
    assert report.completed and len(report.layers) == 7
    assert report.total_sparsity == pytest.approx(0.7, abs=1e-3)
    ids = pruner.tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
