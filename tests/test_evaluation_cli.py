"""``prune --eval --tasks``, ``eval --reference --tasks`` and ``analyze`` on a pruned folder, through the real
entry points on a tiny random Llama; the errors that must come before any model is loaded."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from conftest import make_tiny_model
from optimum_alpha.commands.cli import main
from optimum_alpha.data import load_texts
from optimum_alpha.evaluation.local_tasks import write_continuation_task
from test_cli import PNG_MAGIC, TINY_PRUNE, _number_after, assert_one_line_error, cli

WINDOWS = ["--eval-seqlen", "32", "--max-windows", "2"]


@pytest.fixture(scope="module")
def dense_folder(tiny_tokenizer, tmp_path_factory) -> Path:
    """A saved tiny Llama whose tokenizer has an EOS token (lm-eval needs one)."""
    folder = tmp_path_factory.mktemp("dense")
    make_tiny_model("llama").save_pretrained(folder)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = "[UNK]"
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    return write_continuation_task(tmp_path_factory.mktemp("task"), count=6, seed=2)


@pytest.fixture(scope="module")
def pruned(dense_folder, task_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("pruned") / "tiny-uniform-wanda-50"
    result = cli("prune", str(dense_folder), "--sparsity", "0.5", "--method", "wanda", "--allocation", "uniform",
                 *TINY_PRUNE, "--eval", *WINDOWS, "--tasks", str(task_file), "--output", str(output),
                 )
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result


def test_prune_eval_reports_kl_spectra_and_zero_shot_in_output_json_and_card(pruned):
    output, result = pruned
    out = result.stdout
    assert "KL divergence to the dense model: mean" in out and "top-1 agreement" in out
    assert "mean block alpha_hill: before pruning" in out
    assert "zero-shot accuracy (lm-eval 0.4" in out and "wikitext2_continuation" in out
    data = json.loads((output / "alpha_pruning.json").read_text())
    kl = data["evaluation"]["kl"]
    assert kl["kl_mean"] > 0 and 0 <= kl["top1_agreement"] <= 1 and kl["windows"] == 2 and kl["seqlen"] == 32
    assert kl["perplexity"] == pytest.approx(data["perplexity"]["pruned"])
    assert kl["reference_perplexity"] == pytest.approx(data["perplexity"]["dense"])
    zero_shot = data["evaluation"]["zero_shot"]
    assert zero_shot["lm_eval_version"].startswith("0.4")
    assert zero_shot["tasks"]["wikitext2_continuation"]["version"] == 1.0
    assert zero_shot["tasks"]["wikitext2_continuation"]["samples"] == 6
    card = (output / "README.md").read_text()
    assert "KL divergence to the dense model (wikitext2, 2 windows x 32 tokens)" in card
    assert "## Zero-shot accuracy" in card and "lm-evaluation-harness 0.4" in card
    assert "mean block alpha_hill | before pruning" in card
    assert (output / "alpha_profile.png").read_bytes()[:8] == PNG_MAGIC


def test_alphas_after_pruning_agree_with_a_reanalysis_of_the_saved_folder(pruned, tmp_path):
    import optimum_alpha  # noqa: F401  (registers the sparse format)
    from optimum_alpha.esd import analyze

    output, _ = pruned
    data = json.loads((output / "alpha_pruning.json").read_text())
    spectra = data["evaluation"]["spectra"]
    again = analyze(AutoModelForCausalLM.from_pretrained(output), show_progress=False)
    assert spectra["after"] == pytest.approx([b.metrics["alpha_hill"] for b in again.blocks], rel=1e-9)
    assert spectra["before"] == pytest.approx([b["alpha_hill"] for b in data["esd_blocks"]], rel=1e-12)
    assert spectra["after"] != pytest.approx(spectra["before"], rel=1e-3)
    # analyze on the pruned folder: today's alphas beside the recorded ones, in esd.json and the plot.
    result = cli("analyze", str(output), "--output", str(tmp_path / "esd"), "--esd-plots", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "alpha_hill before pruning" in result.stdout and "mean block alpha_hill: before pruning" in result.stdout
    esd = json.loads((tmp_path / "esd" / "esd.json").read_text())
    assert [b["metrics"]["alpha_hill"] for b in esd["blocks"]] == pytest.approx(spectra["after"], rel=1e-9)
    assert [b["alpha_hill"] for b in esd["blocks_before_pruning"]] == pytest.approx(spectra["before"], rel=1e-12)
    assert (tmp_path / "esd" / "block_alpha_hill.png").read_bytes()[:8] == PNG_MAGIC


def test_eval_with_reference_and_tasks_prints_accuracy_perplexity_kl_and_agreement(pruned, dense_folder,
                                                                                 task_file, tmp_path):
    output, prune_run = pruned
    results = tmp_path / "results.json"
    run = cli("eval", str(output), "--reference", str(dense_folder), "--tasks", str(task_file), *WINDOWS,
              "--results", str(results))
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert _number_after(out, f"of {output}:") == pytest.approx(_number_after(prune_run.stdout, ", after "), rel=1e-4)
    assert _number_after(out, f"perplexity of the reference {dense_folder}:") == pytest.approx(
        _number_after(prune_run.stdout, "perplexity before pruning:"), rel=1e-4)
    kl_then = json.loads((output / "alpha_pruning.json").read_text())["evaluation"]["kl"]
    saved = json.loads(results.read_text())
    assert saved["kl"]["kl_mean"] == pytest.approx(kl_then["kl_mean"], rel=1e-4)  # reloaded sparse = in memory
    assert _number_after(out, "KL divergence to the reference: mean") == pytest.approx(kl_then["kl_mean"], abs=1e-6)
    assert "top-1 agreement" in out and "wikitext2_continuation" in out and "tokens/s" in out
    assert saved["zero_shot"]["tasks"]["wikitext2_continuation"]["acc"] == pytest.approx(
        json.loads((output / "alpha_pruning.json").read_text())["evaluation"]["zero_shot"]["tasks"][
            "wikitext2_continuation"]["acc"])
    assert saved["speed"]["tokens_per_second"] > 0 and saved["speed"]["model_mib"] > 0


def test_unknown_task_is_one_line_before_loading(dense_folder):
    result = cli("eval", str(dense_folder), "--tasks", "arc_easyy", *WINDOWS)
    assert_one_line_error(result, "unknown lm-eval task 'arc_easyy'", "arc_easy")
    assert "Loading" not in result.stderr


def test_reference_with_another_vocabulary_is_one_line_before_loading(dense_folder, tmp_path):
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(load_texts("wikitext2")[:40], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    other = tmp_path / "other"
    make_tiny_model("llama").save_pretrained(other)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(other)
    result = cli("eval", str(dense_folder), "--reference", str(other), *WINDOWS)
    assert_one_line_error(result, "another tokenizer vocabulary", "KL divergence")
    assert "Loading" not in result.stderr


def test_missing_lm_eval_is_one_line_before_loading(dense_folder, monkeypatch, capsys):
    import optimum_alpha.models as models_module

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.setattr(models_module, "load_model", lambda *a, **k: pytest.fail("model loaded before the check"))
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(dense_folder), "--tasks", "arc_easy"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optimum-alpha[eval]" in err[0]


def test_tasks_flag_alone_means_the_papers_seven():
    from optimum_alpha.commands.cli import build_parser
    from optimum_alpha.evaluation.zero_shot import PAPER_TASKS, split_tasks

    args = build_parser().parse_args(["eval", "m", "--tasks"])
    assert split_tasks(args.tasks) == list(PAPER_TASKS)
    from optimum_alpha.commands.evaluate import PAPER_TASKS as CLI_PAPER_TASKS

    assert CLI_PAPER_TASKS.split(",") == list(PAPER_TASKS)
