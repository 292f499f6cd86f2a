"""The llm-compressor peer benchmark's pure helpers (issue 20), without the peer's venv: its perplexity protocol
is ours to the last window and token, its zero counting is exact, the shared ids file holds exactly what the
pruner calibrates on, and the script runs with optimum_alpha unimportable (the peer venv has none)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import processors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import peer_ids, peer_llmcompressor as peer  # noqa: E402
from optimum_alpha.data import evaluation_tokens, load_texts, sample_calibration  # noqa: E402
from optimum_alpha.evaluate import perplexity  # noqa: E402

from conftest import make_tiny_model  # noqa: E402


@pytest.fixture
def bos_tokenizer(tiny_tokenizer):
    """The tiny tokenizer with a BOS added to every encoding, as real tokenizers do: both protocols must add it
    the same way (once, at the start of the joined text)."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="[UNK] $A", special_tokens=[("[UNK]", tokenizer.convert_tokens_to_ids("[UNK]"))])
    assert tokenizer("a b").input_ids[0] == tokenizer.convert_tokens_to_ids("[UNK]")
    return tokenizer


@pytest.fixture
def small_wikitext(tmp_path) -> Path:
    """The first 150 rows of the shipped WikiText-2 test split, as a file both sides can read."""
    path = tmp_path / "wiki.jsonl"
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in load_texts("wikitext2")[:150]))
    return path


def test_peer_reads_the_same_rows_as_the_project():
    assert peer.read_rows() == load_texts("wikitext2")


def test_peer_windows_and_perplexity_equal_optimum_alpha_evaluate(bos_tokenizer, small_wikitext):
    model = make_tiny_model("llama", layers=2)
    windows = peer.evaluation_windows(bos_tokenizer, peer.read_rows(small_wikitext), seqlen=32, max_windows=5)
    stream = evaluation_tokens(bos_tokenizer, str(small_wikitext))
    assert windows.shape == (5, 32)
    assert torch.equal(windows.flatten(), stream[:160])
    assert windows[0, 0] == bos_tokenizer.convert_tokens_to_ids("[UNK]")
    ours = perplexity(model, bos_tokenizer, dataset=str(small_wikitext), seqlen=32, max_windows=5,
                      show_progress=False)
    assert peer.window_perplexity(model, windows) == pytest.approx(ours, rel=1e-9)
    shifted = peer.window_perplexity(model, peer.evaluation_windows(bos_tokenizer, peer.read_rows(small_wikitext),
                                                                    seqlen=31, max_windows=5))
    assert shifted != pytest.approx(ours, rel=1e-6)  # the parity above is not vacuous


def test_window_count_is_capped_by_the_text(bos_tokenizer):
    windows = peer.evaluation_windows(bos_tokenizer, ["one two three four five six"], seqlen=2, max_windows=100)
    assert windows.shape[0] == len(bos_tokenizer("one two three four five six").input_ids) // 2
    with pytest.raises(ValueError, match="fewer than one window"):
        peer.evaluation_windows(bos_tokenizer, ["one"], seqlen=64, max_windows=None)


def test_zero_survival_counts_revived_zeros_exactly():
    before = {"a": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "b": torch.tensor([0.0, 2.0, 3.0, 0.0])}
    masks = peer.zero_masks(before)
    after = {"a": torch.tensor([[0.0, 1.1], [0.25, 0.0]]),  # one of a's three zeros revived
             "b": torch.tensor([0.0, 0.0, 3.0, -0.0])}     # a new zero is not a kept one; -0.0 is zero
    survival = peer.zero_survival(masks, after)
    assert (survival.pruned, survival.kept) == (5, 4)
    assert survival.share == pytest.approx(0.8)
    assert (survival.worst_matrix, survival.worst_share) == ("a", pytest.approx(2 / 3))
    assert peer.zero_share(after) == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="different matrices"):
        peer.zero_survival(masks, {"a": after["a"]})
    with pytest.raises(ValueError, match="mask"):
        peer.zero_survival(masks, {"a": after["a"], "b": after["b"][:3]})


def test_block_linear_weights_are_the_decoder_blocks_matrices_only():
    model = make_tiny_model("llama", layers=2)
    names = sorted(peer.block_linear_weights(model))
    assert len(names) == 2 * 7 and all(name.startswith("model.layers.") for name in names)
    assert "lm_head" not in " ".join(names)


def test_shared_ids_are_what_the_pruner_calibrates_and_evaluates_on(bos_tokenizer, small_wikitext):
    model = make_tiny_model("llama", layers=2)
    saved = peer_ids.shared_ids(model, bos_tokenizer, nsamples=3, seqlen=24, seed=1, eval_seqlen=32,
                                max_windows=4, dataset=str(small_wikitext))
    expected = sample_calibration(bos_tokenizer, "c4", 3, 24, seed=1).ids
    assert torch.equal(saved["calibration"], expected)
    assert not torch.equal(saved["calibration"], sample_calibration(bos_tokenizer, "c4", 3, 24, seed=2).ids)
    assert torch.equal(saved["evaluation"], peer.evaluation_windows(bos_tokenizer, peer.read_rows(small_wikitext),
                                                                    32, 4))
    assert saved["protocol"]["eval_seqlen"] == 32 and saved["protocol"]["max_windows"] == 4
    assert saved["protocol"]["calibration"]["windows"] == 3


def test_peer_script_imports_without_optimum_alpha():
    code = ("import sys; sys.modules['optimum_alpha'] = None; sys.path.insert(0, '.'); "
            "import benchmarks.peer_llmcompressor as p; print(p.PIPELINES)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sparsegpt+gptq" in done.stdout


def test_the_pruner_calibrates_on_exactly_the_shared_ids(bos_tokenizer, small_wikitext):
    """What the embeddings see while AlphaPruner calibrates is the ids file's calibration, window by window."""
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    model = make_tiny_model("llama", layers=2)
    saved = peer_ids.shared_ids(model, bos_tokenizer, nsamples=3, seqlen=24, seed=1, eval_seqlen=32,
                                max_windows=2, dataset=str(small_wikitext))
    seen: list[torch.Tensor] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        pruner = AlphaPruner.from_pretrained(model, tokenizer=bos_tokenizer, show_progress=False)
        pruner.prune(AlphaPruningConfig(sparsity=0.5, method="wanda", nsamples=3, seqlen=24, seed=1),
                     show_progress=False)
    finally:
        handle.remove()
    assert torch.equal(torch.cat(seen).reshape(-1, 24), saved["calibration"])


def test_peer_table_renders_the_json_rows():
    row = {"pipeline": "wanda+gptq", "sparsity_after_prune": 0.5, "sparsity_final": 0.47, "zeros_kept_share": 0.95,
           "perplexity_after_prune": 80.0, "perplexity": 110.0, "prune": {"wall_s": 300.0, "cpu_s": 80.0},
           "quantise": {"wall_s": 500.0, "cpu_s": 140.0}}
    float_row = {**row, "pipeline": "sparsegpt", "quantise": None}
    lines = peer.markdown([row, float_row], dense=35.9).splitlines()
    assert lines[2].startswith("| dense |") and "35.900" in lines[2]
    assert lines[3].split(" | ")[1:4] == ["50.00 %", "47.00 %", "95.00 %"]
    assert "(no GPTQ)" in lines[4] and "140" not in lines[4]
