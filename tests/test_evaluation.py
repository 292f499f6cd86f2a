"""Evaluation beyond perplexity: lm-eval zero-shot on a local task, KL divergence to a reference model."""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from optimum_alpha.data import load_texts
from optimum_alpha.errors import ConfigError, MissingExtraError
from optimum_alpha.evaluate import kl_divergence, perplexity, zero_shot
from optimum_alpha.evaluation.kl import DenseReference
from optimum_alpha.evaluation.local_tasks import (
    continuation_rows,
    continuation_task,
    shipped_task_file,
    write_continuation_task,
)
from optimum_alpha.evaluation.zero_shot import prepare_tasks


@pytest.fixture
def eos_tokenizer(tiny_tokenizer):
    """lm-eval prefixes empty contexts with BOS/EOS, so its tokenizer needs one."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = "[UNK]"
    return tokenizer


def _local_task(tmp_path, count: int) -> tuple[dict, list[dict]]:
    rows = continuation_rows(load_texts("wikitext2-validation"), count=count, seed=3)
    data = tmp_path / "continuation.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return continuation_task(data, name="local_continuation"), rows


@torch.no_grad()
def direct_choice(model, tokenizer, context: str, choices: list[str]) -> int:
    """The choice with the highest summed log-likelihood of its tokens after the context, computed here."""
    scores = []
    for choice in choices:
        context_ids = tokenizer(context, add_special_tokens=False).input_ids
        whole = tokenizer(context + " " + choice, add_special_tokens=False).input_ids
        log_probs = F.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
        positions = range(len(context_ids) - 1, len(whole) - 1)
        scores.append(sum(float(log_probs[p, whole[p + 1]]) for p in positions))
    return max(range(len(choices)), key=scores.__getitem__)


def _direct_accuracy(model, tokenizer, rows) -> float:
    return sum(direct_choice(model, tokenizer, r["context"], r["choices"]) == r["label"] for r in rows) / len(rows)


def test_zero_shot_local_task_equals_direct_log_likelihood(tmp_path, eos_tokenizer):
    model = make_tiny_model("llama", seed=1)
    task, rows = _local_task(tmp_path, count=12)
    result = zero_shot(model, eos_tokenizer, [task], log_samples=True)
    entry = result.tasks["local_continuation"]
    assert entry["samples"] == 12 and entry["version"] == 1.0 and entry["num_fewshot"] == 0
    picked = [max(range(4), key=lambda i: s["filtered_resps"][i][0]) for s in result.samples["local_continuation"]]
    direct = [direct_choice(model, eos_tokenizer, r["context"], r["choices"]) for r in rows]
    assert picked == direct
    assert entry["acc"] == pytest.approx(_direct_accuracy(model, eos_tokenizer, rows), abs=1e-12)
    assert result.lm_eval_version.startswith("0.4")


def test_task_file_with_relative_data_path_runs_and_limit_applies(tmp_path, eos_tokenizer):
    yaml_file = write_continuation_task(tmp_path / "tasks", count=10, seed=1)
    result = zero_shot(make_tiny_model("gpt2"), eos_tokenizer, str(yaml_file), limit=4)
    assert result.tasks["wikitext2_continuation"]["samples"] == 4
    assert result.limit == 4 and 0.0 <= result.mean_accuracy <= 1.0


def test_shipped_task_file_is_what_the_builder_writes(tmp_path):
    written = write_continuation_task(tmp_path)
    shipped = shipped_task_file()
    assert written.read_text() == shipped.read_text()
    assert (tmp_path / "wikitext2_continuation.jsonl").read_text() == shipped.with_suffix(".jsonl").read_text()


def test_missing_lm_eval_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(MissingExtraError, match=r"optimum-alpha\[eval\]") as info:
        prepare_tasks("arc_easy")
    assert "\n" not in str(info.value)


def test_missing_task_file_and_data_file_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        prepare_tasks(str(tmp_path / "nope.yaml"))
    task = continuation_task(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="data file .* does not exist"):
        prepare_tasks([task])


@torch.no_grad()
def _brute_force_kl(model, reference, rows) -> tuple[torch.Tensor, float]:
    values, agree = [], 0
    for row in rows:
        q = F.log_softmax(model(row[None]).logits[0, :-1].double(), -1)
        p = F.log_softmax(reference(row[None]).logits[0, :-1].double(), -1)
        values.append(F.kl_div(q, p, log_target=True, reduction="none").sum(-1))
        agree += int((q.argmax(-1) == p.argmax(-1)).sum())
    values = torch.cat(values)
    return values, agree / values.numel()


def test_kl_of_a_model_to_itself_is_zero_and_perplexities_match(tiny_tokenizer):
    model = make_tiny_model("llama")
    result = kl_divergence(model, model, tiny_tokenizer, seqlen=64, max_windows=3)
    assert result.kl_mean == 0.0 and result.kl_p99 == 0.0 and result.top1_agreement == 1.0
    assert result.tokens == 3 * 63
    ppl = perplexity(model, tiny_tokenizer, seqlen=64, max_windows=3, show_progress=False)
    assert result.perplexity == pytest.approx(ppl, rel=1e-5)
    assert result.reference_perplexity == result.perplexity


def test_kl_equals_a_direct_computation(tiny_tokenizer):
    model, reference = make_tiny_model("opt", seed=1), make_tiny_model("opt", seed=2)
    result = kl_divergence(model, reference, tiny_tokenizer, seqlen=48, max_windows=2)
    from optimum_alpha.evaluation.perplexity import protocol_windows

    rows, _ = protocol_windows(model, tiny_tokenizer, seqlen=48, max_windows=2)
    values, agreement = _brute_force_kl(model, reference, rows)
    assert result.kl_mean == pytest.approx(float(values.mean()), rel=1e-9)
    assert result.kl_median == pytest.approx(float(values.median()), rel=1e-9)
    assert result.kl_p99 == pytest.approx(float(torch.quantile(values, 0.99)), rel=1e-9)
    assert result.top1_agreement == agreement and result.kl_mean > 0.01


def test_dense_reference_captured_before_pruning_equals_two_model_kl(tiny_tokenizer):
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    model = make_tiny_model("llama", layers=3)
    dense = copy.deepcopy(model)
    reference = DenseReference.capture(model, tiny_tokenizer, seqlen=64, max_windows=3)
    assert reference.nbytes == 3 * 63 * 64 * 4  # windows x positions x hidden x float32: no logits kept
    assert reference.perplexity == pytest.approx(perplexity(dense, tiny_tokenizer, seqlen=64, max_windows=3,
                                                            show_progress=False), rel=1e-5)
    AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer).prune(
        AlphaPruningConfig(sparsity=0.5, method="magnitude", allocation="uniform"), show_progress=False)
    captured = reference.compare(model)
    both = kl_divergence(model, dense, tiny_tokenizer, seqlen=64, max_windows=3)
    for name in ("kl_mean", "kl_median", "kl_p99", "top1_agreement", "perplexity", "reference_perplexity"):
        assert getattr(captured, name) == pytest.approx(getattr(both, name), rel=1e-6), name
    assert captured.kl_mean > 0


def test_reference_with_another_vocabulary_is_refused(tiny_tokenizer):
    model = make_tiny_model("llama")
    other = copy.deepcopy(model)
    other.resize_token_embeddings(330)
    with pytest.raises(ConfigError, match="330 tokens and the model 320"):
        kl_divergence(model, other, tiny_tokenizer, seqlen=32, max_windows=1)


def test_soft_capped_logits_are_refused_by_the_dense_capture(tiny_tokenizer):
    model = make_tiny_model("gpt2")
    forward = model.forward

    def capped(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = 10 * torch.tanh(out.logits / 10)
        return out

    model.forward = capped
    with pytest.raises(ConfigError, match="changes its logits after the output head"):
        DenseReference.capture(model, tiny_tokenizer, seqlen=32, max_windows=1)
    assert math.isfinite(perplexity(model, tiny_tokenizer, seqlen=32, max_windows=1, show_progress=False))


def test_evaluation_benchmark_prints_one_row_per_model(tiny_tokenizer, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import evaluation as benchmark

    text_file = tmp_path / "head.txt"
    text_file.write_text("\n\n".join(load_texts("wikitext2")[:200]))
    text = benchmark.main(["--nsamples", "2", "--seqlen", "32", "--eval-seqlen", "32", "--max-windows", "2",
                           "--eval-dataset", str(text_file), "--method", "magnitude"],
                          model_factory=lambda: (make_tiny_model("llama", layers=3), tiny_tokenizer))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")][1:]
    assert [r[:2] for r in rows] == [["dense", "-"], ["magnitude 50%", "alpha"], ["magnitude 50%", "uniform"]]
    assert rows[0][3] == "0" and all(float(r[3]) > 0 and 0 < float(r[6]) <= 1 for r in rows[1:])
