"""ESD analysis: eigenvalues, the fix-finger Hill fit, the other metrics and the model-level report."""

from __future__ import annotations

import math

import pytest
import torch

from optimum_alpha.errors import ModelStructureError
from optimum_alpha.esd import (
    METRICS,
    ESDReport,
    analyze,
    hill_fit,
    matrix_eigenvalues,
    nonzero_eigenvalues,
    spectrum_metrics,
)
from optimum_alpha.model_utils import PRUNABLE_TYPES, find_blocks


@pytest.mark.parametrize("shape", [(50, 80), (120, 40), (64, 64)])
def test_eigenvalues_match_squared_singular_values(shape):
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    fast = matrix_eigenvalues(weight)
    reference = torch.linalg.svdvals(weight.double()).pow(2).flip(0)
    assert fast.dtype == torch.float64
    assert fast.numel() == min(shape)
    assert torch.all(fast[1:] >= fast[:-1])
    assert (fast - reference).abs().max() / reference.max() <= 1e-8


def test_eigenvalues_of_rank_deficient_matrix_are_never_negative():
    torch.manual_seed(0)
    low_rank = torch.randn(100, 5) @ torch.randn(5, 80)  # float32 Gram would give negative eigenvalues here
    eigenvalues = matrix_eigenvalues(low_rank)
    assert torch.all(eigenvalues >= 0)
    assert int((eigenvalues > eigenvalues.max() * 1e-10).sum()) == 5


def test_small_genuine_eigenvalues_are_kept_and_round_off_zeros_dropped():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64))
    singular = torch.linspace(1.0, 10.0, 40, dtype=torch.float64)
    singular[0] = 1e-5  # eigenvalue 1e-10 relative to the largest: small but real
    singular[1:3] = 0.0  # exact zeros: only round-off survives in the Gram matrix
    weight = u[:, :40] @ torch.diag(singular) @ v.T
    kept = nonzero_eigenvalues(matrix_eigenvalues(weight))
    assert kept.numel() == 38
    assert float(kept.min()) == pytest.approx(1e-10, rel=1e-3)


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.5])
def test_hill_fit_recovers_pareto_exponent(alpha):
    """Eigenvalues drawn from p(λ) ∝ λ^-α (λ ≥ 1): the fitted exponent is within 0.15 of α."""
    generator = torch.Generator().manual_seed(1)
    uniform = torch.rand(4000, generator=generator, dtype=torch.float64)
    samples = uniform.pow(-1.0 / (alpha - 1.0))
    fit = hill_fit(samples)
    assert abs(fit.alpha - alpha) < 0.15
    assert fit.n_tail > 1000
    assert 0 <= fit.ks_distance < 0.1


def _naive_hill(eigs: torch.Tensor, upper: float, lower: float = 0.0):
    """The paper's description, one candidate at a time (slow reference)."""
    lam = eigs.sort().values
    best = None
    for i in range(lam.numel() - 1):
        xmin = float(lam[i])
        if not lower <= xmin <= upper:
            continue
        tail = lam[i:]
        n = tail.numel()
        a = 1 + n / float(torch.log(tail / xmin).sum())
        cdf = 1 - (tail / xmin) ** (1 - a)
        d = float((cdf - torch.arange(n, dtype=torch.float64) / n).abs().max())
        if best is None or d < best[1]:
            best = (a, d, xmin)
    return best


@pytest.mark.parametrize("mode", ["reference", "strict"])
def test_vectorised_hill_fit_equals_candidate_loop(mode):
    torch.manual_seed(3)
    eigs = matrix_eigenvalues(torch.randn(300, 200) @ torch.diag(torch.linspace(0.1, 3, 200)))
    fit = hill_fit(eigs, fix_finger=mode)
    log10 = torch.log10(eigs)
    counts = torch.histc(log10, bins=100, min=float(log10.min()), max=float(log10.max()))
    peak = 10 ** (float(log10.min()) + int(counts.argmax()) * float(log10.max() - log10.min()) / 100)
    alpha, distance, xmin = _naive_hill(eigs, 1.5 * peak, 0.95 * peak if mode == "strict" else 0.0)
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.ks_distance == pytest.approx(distance, rel=1e-9)
    assert fit.xmin == pytest.approx(xmin, rel=1e-12)
    if mode == "strict":
        assert 0.95 * peak <= fit.xmin <= 1.5 * peak


def test_shape_and_scale_metrics_follow_their_definitions():
    torch.manual_seed(0)
    weight = torch.randn(80, 60)
    eigs = matrix_eigenvalues(weight)
    metrics, fit = spectrum_metrics(eigs)
    fro = float(weight.double().pow(2).sum())
    spec = float(torch.linalg.matrix_norm(weight.double(), ord=2)) ** 2
    assert metrics["frobenius_norm_sq"] == pytest.approx(fro, rel=1e-9)
    assert metrics["spectral_norm_sq"] == pytest.approx(spec, rel=1e-9)
    assert metrics["stable_rank"] == pytest.approx(fro / spec, rel=1e-9)
    assert metrics["alpha_hat"] == pytest.approx(fit.alpha * math.log10(spec), rel=1e-12)
    assert 0 < metrics["entropy"] < 1
    flat, _ = spectrum_metrics(matrix_eigenvalues(torch.eye(40)))
    assert flat["entropy"] == pytest.approx(1.0)
    assert flat["stable_rank"] == pytest.approx(40.0)


@pytest.mark.parametrize(
    "weight, message",
    [
        (torch.zeros(10, 10), "non-zero eigenvalue"),
        (torch.outer(torch.arange(1.0, 11), torch.arange(1.0, 8)), "at least 3"),
    ],
)
def test_degenerate_spectra_raise_clear_errors(weight, message):
    with pytest.raises(ModelStructureError, match=message):
        spectrum_metrics(matrix_eigenvalues(weight), name="blk.w")


def test_non_finite_weight_is_reported_by_name(tiny_llama):
    with torch.no_grad():
        tiny_llama.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(ModelStructureError, match=r"model\.layers\.1\.mlp\.up_proj.*NaN/Inf"):
        analyze(tiny_llama, show_progress=False)


def test_analyze_covers_every_block_linear_but_not_embeddings(tiny_model):
    report = analyze(tiny_model, show_progress=False)
    _, blocks = find_blocks(tiny_model)
    expected = sum(isinstance(m, PRUNABLE_TYPES) for block in blocks for m in block.modules())
    assert len(report.matrices) == expected
    assert not any("lm_head" in m.name or "embed" in m.name for m in report.matrices)
    assert len(report.blocks) == len(blocks)
    for block in report.blocks:
        members = [m for m in report.matrices if m.block_index == block.index]
        for metric in METRICS:
            assert block.metrics[metric] == pytest.approx(sum(m.metrics[metric] for m in members) / len(members))
        assert math.isfinite(block.metrics["alpha_hill"]) and block.metrics["alpha_hill"] > 1
        assert block.num_params == sum(m.num_params for m in members)


def test_report_json_round_trip(tiny_llama, tmp_path):
    report = analyze(tiny_llama, metrics=["alpha_hill", "stable_rank"], show_progress=False)
    path = tmp_path / "esd.json"
    report.to_json(path)
    loaded = ESDReport.from_json(path)
    assert loaded.to_dict() == report.to_dict()
    assert loaded.matrices[0].shape == report.matrices[0].shape
    assert set(loaded.matrices[0].metrics) == {"alpha_hill", "stable_rank"}
    assert loaded.scores("stable_rank", "matrix")[0] == [m.metrics["stable_rank"] for m in report.matrices]
