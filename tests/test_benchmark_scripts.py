"""Smoke tests of the benchmark scripts not covered by test_benchmarks.py: the 3x3 grid, the peak-memory
runner and the checkpoint-size table, each on a tiny random Llama so that they cannot rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import checkpoint_size, combinations, gptq_holdout, memory  # noqa: E402

from conftest import make_tiny_model  # noqa: E402


@pytest.fixture
def tiny_folder(tmp_path, tiny_tokenizer) -> Path:
    """A tiny Llama with its tokenizer saved as a normal model folder (what the scripts load by path)."""
    folder = tmp_path / "tiny-llama"
    make_tiny_model("llama", layers=2).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def data_rows(text: str) -> list[list[str]]:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|") and not line.replace(" ", "").startswith(("|---", "|:--", "|--:"))
    ]
    return rows[1:]


def test_combinations_grid_has_one_cell_per_method_and_allocation(tiny_tokenizer):
    table = combinations.main(
        ["--methods", "magnitude", "wanda", "--allocations", "uniform", "alpha", "--nsamples", "2",
         "--seqlen", "32", "--max-windows", "1", "--eval-seqlen", "32"],
        model_factory=lambda: (make_tiny_model("llama", layers=2), tiny_tokenizer),
    )
    rows = data_rows(table)
    assert [row[0] for row in rows] == ["magnitude", "wanda"]
    assert all(len(row) == 3 and all(float(cell) > 1 for cell in row[1:]) for row in rows)


def test_memory_runner_reports_each_run(tiny_folder):
    table = memory.main(["--model", str(tiny_folder), "--nsamples", "2", "--seqlen", "32",
                         "--runs", "magnitude/uniform", "wanda/alpha"])
    rows = data_rows(table)
    assert [row[0] for row in rows] == ["magnitude + uniform", "wanda + alpha"]
    assert all(float(row[6]) > 0 for row in rows)  # peak RSS measured


def test_checkpoint_size_table_shows_sparse_smaller_and_exact(tiny_folder, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["checkpoint_size.py", "--model", str(tiny_folder), "--sparsities", "0.9",
                                      "--dtypes", "float32"])
    checkpoint_size.main()
    rows = data_rows(capsys.readouterr().out)
    assert len(rows) == 1
    sparsity, _, dtype, dense_mb, sparse_mb, ratio, _, exact = rows[0]
    assert (sparsity, dtype, exact) == ("90%", "float32", "yes")
    assert float(ratio) < 1.0


def test_architecture_table_has_a_row_per_family_with_exact_replay_and_full_coverage():
    from benchmarks import architectures

    table = architectures.main(["--families", "gemma2", "mixtral"])
    rows = {row[0]: row for row in data_rows(table)}
    assert set(rows) == {"gemma2", "mixtral"}
    for row in rows.values():
        assert float(row[2]) < 1e-5 and row[3] == "1.00" and row[7] == "yes"
        assert float(row[5]) == pytest.approx(0.5, abs=1e-3)


def test_structured_benchmark_runs_on_a_tiny_model(tiny_tokenizer):
    from benchmarks import structured

    text = structured.main(
        ["--fractions", "0.3", "--quality-fraction", "0.3", "--nsamples", "2", "--seqlen", "32",
         "--speed-nsamples", "2", "--eval-seqlen", "32", "--max-windows", "1", "--prefill", "16",
         "--decode-tokens", "2", "--repeats", "1"],
        model_factory=lambda: (make_tiny_model("llama", layers=2), tiny_tokenizer),
    )
    tables = text.split("| model |")
    quality, speed = data_rows(tables[0]), data_rows("| model |" + tables[1])
    assert [row[:2] for row in quality[1:]] == [["uniform", "refit"], ["uniform", "slice only"],
                                                ["alpha", "refit"], ["alpha", "slice only"]]
    assert all(float(row[3]) > 1 for row in quality)
    assert [row[0] for row in speed] == ["dense", "uniform 30%", "alpha 30%"]
    assert all(float(row[2]) == pytest.approx(0.3, abs=0.05) for row in speed[1:])
    assert len(speed[0]) == 8


@pytest.mark.parametrize("dtype, scale_bits", [("float32", 32), ("bfloat16", 16)])
def test_quantisation_table_keeps_every_zero_and_shrinks_the_weights(dtype, scale_bits, tiny_tokenizer):
    from benchmarks import quantisation

    model = make_tiny_model("llama", layers=2)
    text = quantisation.main(
        ["--rows", "dense", "w4-rtn", "wanda-50-w4", "sparsegpt-50-w4", "sparsegpt-50-w4-joint",
         "--nsamples", "2", "--seqlen", "32",
         "--eval-seqlen", "32", "--max-windows", "1", "--group-size", "32", "--dtype", dtype],
        factory=lambda: (model, tiny_tokenizer),
    )
    rows = {row[0]: row for row in data_rows(text)}
    assert list(rows) == ["dense", "W4 RTN", "Wanda + alpha 50 % -> W4 GPTQ (mask kept)",
                          "SparseGPT + alpha 50 % -> W4 GPTQ (mask kept)", "SparseGPT + alpha 50 % joint W4 (one sweep)"]
    for name in list(rows)[2:]:
        assert rows[name][3] == "100.00 %"  # every pruned weight still exactly 0
        assert float(rows[name][5]) == 4 + scale_bits / 32  # 4 bits + a scale in the model's dtype per 32
    assert float(rows["W4 RTN"][6]) < float(rows["dense"][6])
    assert f"{dtype} model and scales" in text


def test_quantisation_dense_row_is_measured_on_untouched_buffers(tiny_tokenizer):
    """Measuring the bfloat16 folder size must not round the measured model's float buffers (rotary inv_freq)."""
    from benchmarks import quantisation

    model = make_tiny_model("llama", layers=2)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    quantisation.main(["--rows", "dense", "--eval-seqlen", "32", "--max-windows", "1"],
                      factory=lambda: (model, tiny_tokenizer))
    assert buffers and all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    assert model.dtype == torch.float32


def test_no_benchmark_script_shadows_an_installed_module():
    """``python benchmarks/X.py`` puts benchmarks/ first on sys.path: a script named like a package (a
    ``gguf.py`` did) hides it from everything the script imports, and loading the SmolLM2 GGUF fails."""
    import importlib.util

    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    stems = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    assert "quantisation" in stems
    shadowing = []
    for stem in stems:
        spec = importlib.util.find_spec(stem)
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is not None and folder.parent not in origin.parents:  # installed, not one of ours
            shadowing.append(f"{stem} ({spec.origin})")
    assert not shadowing, f"rename these benchmark scripts: {shadowing}"


def test_gptq_holdout_table_shows_gptq_fitting_its_calibration_tokens(tiny_tokenizer):
    model = make_tiny_model("llama", layers=2)
    names = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    text = gptq_holdout.main(["--matrices", *names, "--nsamples", "2", "8", "--heldout", "2", "--seqlen", "32",
                              "--group-size", "32", "--dataset", "wikitext2"],
                             factory=lambda: (model, tiny_tokenizer))
    rows = data_rows(text)
    assert [(row[0], row[2]) for row in rows] == [("2", names[0]), ("2", names[1]), ("8", names[0]),
                                                 ("8", names[1])]
    for row in rows:
        rtn_seen, gptq_seen, rtn_unseen, gptq_unseen = map(float, row[3:])
        assert gptq_seen < rtn_seen  # GPTQ minimises exactly this
        assert min(rtn_unseen, gptq_unseen) > 0
