"""Smoke test of benchmarks/paper_table.py: main() on a tiny random Llama with tiny settings prints one row per
method x allocation (the auto rows with their chosen ε / β) and reconstruction column, the fix-finger pair, the
verdicts (baselines, FARMS vs alpha), and resumes from its log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import paper_table  # noqa: E402

from conftest import make_tiny_model  # noqa: E402


def test_paper_table_main_on_a_tiny_model(tiny_tokenizer, tmp_path):
    from optimum_alpha.data import load_texts

    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("\n\n".join(load_texts("wikitext2")[:200]))
    log = tmp_path / "runs.jsonl"
    argv = ["--methods", "wanda", "--sparsities", "0.6", "--epsilon-grid", "0.1", "0.5", "--heldout", "2",
            "--nsamples", "2", "--seqlen", "32", "--max-windows", "2", "--eval-seqlen", "64",
            "--allocations", "uniform", "owl", "dlp", "atp-auto", "alpha", "alpha-auto", "alpha-farms",
            "--atp-grid", "0.0", "0.05", "--reconstruct", "none", "block",
            "--eval-dataset", str(eval_file), "--fix-finger-cells", "wanda:0.6", "--log", str(log)]
    text = paper_table.main(argv, model_factory=lambda: (make_tiny_model("llama", layers=3), tiny_tokenizer))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]
    assert "| method | allocation | 60% | 60% +rec |" in text
    assert [r[:2] for r in rows[:8]] == [["dense", "-"], ["wanda", "uniform"], ["wanda", "owl"], ["wanda", "dlp"],
                                         ["wanda", "atp-auto"], ["wanda", "alpha"], ["wanda", "alpha-auto"],
                                         ["wanda", "alpha-farms"]]
    assert "(β 0)" in rows[4][2] or "(β 0.05)" in rows[4][2]
    assert "(ε 0.1)" in rows[6][2] or "(ε 0.5)" in rows[6][2]
    assert rows[8][:2] == ["wanda", "60%"] and float(rows[8][2]) > 1 and float(rows[8][3]) > 1
    assert "- wanda 60%: alpha-farms" in text and "- wanda 60% +rec: alpha-farms" in text
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 1 + 7 * 2 + 1  # dense, seven allocations x two columns, strict
    auto = next(r for r in records if r.get("allocation") == "alpha-auto")
    assert auto["epsilon_search"]["chosen"] in (0.1, 0.5) and auto["calibration"]["sampling"] == "document"
    refit = [r for r in records if r.get("reconstruct") == "block"]
    assert len(refit) == 7 and all(r["reconstruction_s"] > 0 for r in refit)
    # Every cell is in the log: a resumed run loads no model and prints the same table.
    again = paper_table.main(argv[:-2] + ["--resume", str(log)], model_factory=None)
    assert again.split("time ")[1].split("\n", 1)[1] == text.split("time ")[1].split("\n", 1)[1]
    # --no-run prints what the logs hold and marks the rest, without loading a model.
    dense_only = tmp_path / "dense.jsonl"
    dense_only.write_text(log.read_text().splitlines()[0] + "\n")
    partial = paper_table.main(argv[:-2] + ["--resume", str(dense_only), "--no-run"], model_factory=None)
    assert "| wanda | uniform | not run |" in partial and "does NOT beat" not in partial
