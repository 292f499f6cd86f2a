"""FARMS (esd_sampling="farms"): windows on a regular grid, pooled eigenvalues, xmin at the middle, against a
test-side re-typing of the authors' description (loops over windows, float32 svdvals, as their code does)."""

from __future__ import annotations

import math

import pytest
import torch

from optimum_alpha import AlphaPruningConfig
from optimum_alpha.errors import ConfigError, ModelStructureError
from optimum_alpha.esd import ESDReport, analyze
from optimum_alpha.esd_sampling import FarmsOptions, farms_eigenvalues, grid_starts, window_shape
from optimum_alpha.matrices import model_weights


def reference_farms(weight: torch.Tensor, rows: int = 100, q_ratio: float = 2.0, ops: int = 10) -> dict:
    """The authors' estimator as their paper and README describe it, typed independently: windows of
    rows x int(rows·Q), start step (size - window) // (ops - 1), at most ops starts capped at size - window;
    squared singular values of every window pooled and sorted; xmin = λ[N // 2]; Hill alpha on the tail."""
    w = weight.detach().float()
    n_rows, n_cols = w.shape
    cols = int(rows * q_ratio)
    row_step = max(1, (n_rows - rows) // (ops - 1))
    col_step = max(1, (n_cols - cols) // (ops - 1))
    row_windows = min(ops, max(1, (n_rows - rows) // row_step + 1))
    col_windows = min(ops, max(1, (n_cols - cols) // col_step + 1))
    pooled = []
    for i in range(row_windows):
        for j in range(col_windows):
            r0 = min(i * row_step, n_rows - rows)
            c0 = min(j * col_step, n_cols - cols)
            pooled.append(torch.linalg.svdvals(w[r0:r0 + rows, c0:c0 + cols]).square())
    eigs = torch.sort(torch.cat(pooled)).values.double()
    i = int(len(eigs) / 2)
    n = len(eigs) - i
    alpha = 1 + n / (float(torch.log(eigs[i:]).sum()) - n * math.log(float(eigs[i])))
    return {"alpha_hill": alpha, "spectral_norm_sq": float(eigs[-1]), "frobenius_norm_sq": float(eigs.sum()),
            "stable_rank": float(eigs.sum() / eigs[-1]), "count": len(eigs)}


def test_grid_covers_the_matrix_with_windows_inside():
    assert grid_starts(576, 100, 10) == [0, 52, 104, 156, 208, 260, 312, 364, 416, 468]
    assert grid_starts(1536, 200, 10)[-1] + 200 <= 1536
    assert grid_starts(100, 100, 10) == [0]  # a matrix as tall as the window: one row of windows
    assert grid_starts(150, 100, 1) == [0]
    assert window_shape(576, 1536, FarmsOptions()) == (100, 200)
    assert window_shape(64, 64, FarmsOptions()) == (32, 64)  # smaller than the window: aspect ratio kept
    with pytest.raises(ModelStructureError, match="too small for FARMS"):
        window_shape(4, 4, FarmsOptions())


def test_pooled_eigenvalues_are_those_of_every_window():
    torch.manual_seed(0)
    weight = torch.randn(300, 500)
    eigs = farms_eigenvalues(weight)
    assert eigs.dtype == torch.float64 and bool((eigs >= 0).all())
    assert eigs.numel() == 10 * 10 * 100
    assert torch.all(eigs[1:] >= eigs[:-1])
    first = torch.linalg.svdvals(weight[:100, :200].double()).square()
    assert all(bool(torch.isclose(eigs, v, rtol=1e-9).any()) for v in first[:5])


def _compare(model, options: FarmsOptions, tolerance: float = 1e-3, blocks=None):
    path, block_weights = model_weights(model)
    matrices = [m for b in block_weights for m in b.matrices if blocks is None or m.block_index in blocks]
    report = analyze(model, esd_sampling="farms", farms=options, matrices=matrices, show_progress=False)
    assert report.esd_sampling == "farms" and report.farms == options.to_dict()
    for matrix, spectrum in zip(matrices, report.matrices):
        expected = reference_farms(matrix.read(), options.num_row_samples, options.q_ratio, options.ops_per_dim)
        assert spectrum.n_eigenvalues == expected["count"]
        assert abs(spectrum.metrics["alpha_hill"] - expected["alpha_hill"]) <= tolerance, matrix.name
        for key in ("spectral_norm_sq", "frobenius_norm_sq", "stable_rank"):
            assert spectrum.metrics[key] == pytest.approx(expected[key], rel=1e-4), (matrix.name, key)
    return report


def test_farms_matches_reference_on_a_tiny_model(tiny_llama):
    report = _compare(tiny_llama, FarmsOptions(num_row_samples=8, q_ratio=2.0, ops_per_dim=4))
    full = analyze(tiny_llama, show_progress=False)
    farms = [m.metrics["alpha_hill"] for m in report.matrices]
    assert farms != [m.metrics["alpha_hill"] for m in full.matrices]  # a different estimator, not the full ESD


@pytest.mark.real_model
def test_farms_matches_reference_on_smollm2():
    from optimum_alpha.models import load_model

    model, _ = load_model("smollm2-135m")
    _compare(model, FarmsOptions(), blocks={0, 14, 29})


def test_report_round_trips_and_pruner_reanalyses_on_change(tiny_llama, tiny_tokenizer):
    from optimum_alpha import AlphaPruner

    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, show_progress=False)
    full = AlphaPruningConfig(sparsity=0.5, method="magnitude")
    farms = AlphaPruningConfig(sparsity=0.5, method="magnitude", esd_sampling="farms", farms_rows=8,
                               farms_ops_per_dim=4)
    pruner.allocate(full)
    assert pruner.esd_report.esd_sampling == "full"
    targets, _ = pruner.allocate(farms)
    assert pruner.esd_report.esd_sampling == "farms" and pruner.esd_report.farms["num_row_samples"] == 8
    again = ESDReport.from_json(pruner.esd_report.to_json())
    assert again.matches("reference", "mean", "farms", farms.farms_options)
    assert not again.matches("reference", "mean", "full")
    counts = {m.name: m.numel for b in pruner.block_weights() for m in b.matrices}
    total = sum(targets[name] * n for name, n in counts.items()) / sum(counts.values())
    assert total == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("field, value, message", [
    ("esd_sampling", "sampled", "Unknown esd_sampling"),
    ("farms_rows", 2, "farms_rows must be >= 3"),
    ("farms_q_ratio", 0.0, "farms_q_ratio must be a positive"),
    ("farms_ops_per_dim", 0, "farms_ops_per_dim must be >= 1"),
])
def test_bad_farms_options_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AlphaPruningConfig(**{field: value})
