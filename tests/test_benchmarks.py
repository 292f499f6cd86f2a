"""Smoke tests of the benchmark scripts: each main() runs on a tiny random Llama with tiny settings, so the
scripts cannot rot; the numbers themselves are not checked (benchmarks are not tests)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common, quality, speed  # noqa: E402

from conftest import make_tiny_model  # noqa: E402

TINY_QUALITY = ["--nsamples", "2", "--seqlen", "32", "--max-windows", "2", "--eval-seqlen", "64"]


@pytest.fixture
def factory(tiny_tokenizer):
    return lambda: (make_tiny_model("llama", layers=3), tiny_tokenizer)


@pytest.fixture(scope="module")
def eval_text(tmp_path_factory) -> list[str]:
    """Tiny quality flags, evaluating on the start of WikiText-2 test (tokenizing all of it is slow)."""
    from optimum_alpha.data import load_texts

    path = tmp_path_factory.mktemp("eval") / "wikitext_head.txt"
    path.write_text("\n\n".join(load_texts("wikitext2")[:200]))
    return TINY_QUALITY + ["--eval-dataset", str(path)]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the markdown table's rows (header and separator excluded)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # each script prints one table: drop its header


def test_markdown_table_formats_floats_and_missing_cells():
    text = common.markdown_table(["a", "b"], [[1.234, None], ["x", 2.5e6]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | - |", "| x | 2.5e+06 |"]


def test_quality_table_one_has_a_row_per_method_and_allocation(factory, eval_text, capsys, tmp_path):
    log = tmp_path / "runs.jsonl"
    text = quality.main(["--table", "1", "--methods", "magnitude", "wanda", "--sparsities", "0.7",
                         "--log", str(log)] + eval_text, model_factory=factory)
    rows = table_rows(text)
    assert [r[:2] for r in rows] == [["dense", "-"]] + [[m, a] for m in ("magnitude", "wanda")
                                                         for a in ("uniform", "owl", "alpha")]
    assert all(float(cell) > 1.0 for row in rows for cell in row[2:])
    assert "alpha (" in text  # the verdict lines against uniform and OWL
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(runs) == 1 + 2 * 3
    pruned = [r for r in runs if r["kind"] == "pruned"]
    assert all(abs(r["total_sparsity"] - r["sparsity"]) < 0.01 for r in pruned)
    assert "## quality --table 1" in capsys.readouterr().out
    again = quality.main(["--table", "1", "--methods", "magnitude", "wanda", "--sparsities", "0.7",
                          "--resume", str(log)] + eval_text, model_factory=factory)
    assert table_rows(again) == rows
    assert "run: " not in capsys.readouterr().out  # every run came from the log


def test_quality_solver_table_has_perplexity_time_and_ratios(factory, eval_text):
    text = quality.main(["--table", "solver", "--sparsities", "0.7"] + eval_text, model_factory=factory)
    results, ratios = text.split("\n\n| ratio")
    rows = table_rows(results)
    assert [r[:2] for r in rows] == [["dense", "-"]] + [[m, a] for m in ("sparsegpt", "alps")
                                                         for a in ("uniform", "alpha")]
    cells = [re.fullmatch(r"([\d.]+) \((\d+) s\)", cell) for row in rows[1:] for cell in row[2:]]
    assert len(cells) == 4 and all(cells)  # "perplexity (pruning seconds)"
    ratio_rows = table_rows("| ratio" + ratios)
    assert [r[0] for r in ratio_rows] == ["alps/sparsegpt perplexity", "alps/sparsegpt pruning time"] * 2
    assert all(re.fullmatch(r"[\d.]+x", cell) for row in ratio_rows for cell in row[2:])


def test_quality_metric_table_lists_uniform_and_every_metric(factory, eval_text):
    text = quality.main(["--table", "2", "--metrics", "alpha_hill", "spectral_norm"] + eval_text,
                        model_factory=factory)
    rows = table_rows(text)
    assert [r[0] for r in rows] == ["uniform", "alpha_hill", "spectral_norm_sq"]  # old name: an alias
    assert [r[1] for r in rows] == ["-", "shape", "scale"]
    assert all(r[3] in ("yes", "no", "-") for r in rows)


def test_quality_epsilon_sweep_covers_the_grid_and_plots(factory, eval_text, tmp_path):
    plot = tmp_path / "eps.png"
    text = quality.main(["--table", "eps", "--epsilons", "0.1", "0.5", "--max-sparsity", "none", "0.95",
                         "--granularity", "block", "matrix", "--sparsities", "0.8",
                         "--plot", str(plot)] + eval_text, model_factory=factory)
    rows = table_rows(text)
    assert rows[0][0] == "uniform"
    grid = [tuple(r[:3]) for r in rows[1:]]
    assert grid == [(g, b, e) for g in ("block", "matrix") for b in ("none", "0.95") for e in ("0.1", "0.5")]
    assert all(len(r) == 4 + 1 + 1 for r in rows)  # one seed column and the mean
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_unbounded_mapping_matches_the_budget_and_can_exceed_one():
    counts = [10, 10, 10]
    values = quality.unbounded_sparsities([1.0, 2.0, 10.0], counts, 0.8, 0.4)
    assert sum(v * d for v, d in zip(values, counts)) / sum(counts) == pytest.approx(0.8)
    assert max(values) > 1.0


def test_reference_allocation_is_restored_after_use():
    import optimum_alpha.allocations.alpha as alpha_module

    original = alpha_module.alpha_allocation
    with quality.reference_allocation():
        assert alpha_module.alpha_allocation is not original
        assert alpha_module.alpha_allocation([1.0, 5.0], [1, 1], 0.9, epsilon=0.5) == [pytest.approx(0.45), 1.0]
    assert alpha_module.alpha_allocation is original


def test_speed_esd_table_compares_fast_and_naive(factory):
    text = speed.main(["--part", "esd", "--repeats", "1"], model_factory=factory)
    rows = table_rows(text)
    names = [r[0] for r in rows]
    assert names[:2] == ["straightforward (float32 svdvals + loop)",
                         "optimum-alpha (float64 Gram + vectorised)"]
    end_to_end, fit_only = (float(v) for v in re.findall(r"max \|Δα\| = (\S+)", text))
    assert fit_only < 1e-8  # same spectrum: the vectorised fit picks the loop's xmin and alpha
    assert 0.0 <= end_to_end < 1.0
    ratios = rows[2]
    assert ratios[0].startswith("ratio") and all(cell.endswith("x") for cell in ratios[1:4])


def test_speed_farms_table_times_both_estimators(factory):
    text = speed.main(["--part", "farms", "--repeats", "1"], model_factory=factory)
    rows = table_rows(text)
    assert [r[0] for r in rows] == ["full ESD (fix-finger peak)", "FARMS 100 x 200, 10 x 10 windows (xmin mid)",
                                    "ratio (FARMS / full)"]
    assert all(float(v) >= 0 for v in rows[0][1:4] + rows[1][1:4])
    assert all(cell.endswith("x") for cell in rows[2][1:4])
    assert float(rows[1][4]) > float(rows[0][4])  # pooled windows: more eigenvalues than one tiny matrix
    assert "mean shift by matrix shape" in text


def test_speed_reconstruct_table_lowers_one_blocks_error(factory):
    text = speed.main(["--part", "reconstruct", "--block", "1", "--nsamples", "2", "--seqlen", "32",
                       "--methods", "magnitude", "wanda"], model_factory=factory)
    rows = table_rows(text)
    assert [r[0] for r in rows] == ["magnitude", "wanda"]
    assert all(float(r[4]) < float(r[3]) and float(r[5]) < 1 for r in rows)


def test_naive_hill_matches_library_fit_on_a_random_matrix():
    from optimum_alpha.esd import hill_fit, matrix_eigenvalues

    torch.manual_seed(0)
    weight = torch.randn(48, 96) @ torch.diag(torch.linspace(0.1, 3.0, 96))
    naive = speed.naive_alpha(weight)
    fast = hill_fit(matrix_eigenvalues(weight)).alpha
    assert naive == pytest.approx(fast, abs=1e-3)


def test_speed_pruning_split_has_a_row_per_method(factory):
    text = speed.main(["--part", "prune", "--methods", "magnitude", "wanda", "sparsegpt", "--nsamples", "2",
                       "--seqlen", "32"], model_factory=factory)
    rows = table_rows(text)
    assert [r[0] for r in rows] == ["magnitude", "wanda", "sparsegpt"]
    for row in rows:
        values = [float(c) for c in row[1:8]]  # allocation, capture, ... write
        assert all(v >= 0 for v in values)
    assert float(rows[0][2]) == 0.0  # magnitude captures no calibration inputs


def test_quality_allocation_table_has_a_row_per_block_and_exact_totals(factory):
    text = quality.main(["--table", "alloc", "--epsilons", "0.2", "0.5", "--max-sparsity", "none", "0.9",
                         "--granularity", "block", "matrix", "--sparsities", "0.8"], model_factory=factory)
    rows = table_rows(text)
    assert [r[0] for r in rows] == ["0", "1", "2", "total"]
    assert len(rows[0]) == 2 + 2 * 2 * 2
    bounded = [i for i, h in enumerate(text.split("| block |")[1].splitlines()[0].split("|")) if " 0.9 " in h]
    assert bounded and all(float(rows[-1][i + 1]) == pytest.approx(0.8, abs=1e-3) for i in bounded)
    assert all(float(r[i + 1]) <= 0.9 + 1e-9 for r in rows[:-1] for i in bounded)
