"""Width pruning (structure="width"): smaller blocks, exact budgets, refit, checkpoints, composition, errors."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from conftest import TINY_POSITIONS, TINY_VOCAB, make_tiny_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from optimum_alpha import AlphaPruner, AlphaPruningConfig, load_pruned
from optimum_alpha.errors import ConfigError, ModelStructureError
from optimum_alpha.structured.layout import block_layout
from optimum_alpha.structured.refit import reconstruction_error, refit

FAST = {"nsamples": 4, "seqlen": 32, "calibration_dataset": "c4"}


def make_model(kind: str) -> torch.nn.Module:
    """Tiny Llama (GQA 4:2), Qwen3 (q/k norms, GQA 4:2), wide-GQA Llama (8:2) and MHA Llama (4:4)."""
    torch.manual_seed(0)
    common = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "vocab_size": TINY_VOCAB,
              "max_position_embeddings": TINY_POSITIONS, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    if kind == "llama":
        return make_tiny_model("llama", layers=3)
    if kind == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                            **common)).eval()
    if kind == "gqa8":
        return LlamaForCausalLM(LlamaConfig(num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                                            **common)).eval()
    if kind == "mha":
        return LlamaForCausalLM(LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **common)).eval()
    raise ValueError(kind)


def block_params(model: torch.nn.Module) -> list[int]:
    return [block_layout(b, i).params() for i, b in enumerate(model.model.layers)]


def prune(model, tokenizer, **options):
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False,
                                         run_analysis=options.get("allocation") == "alpha")
    _, report = pruner.prune(AlphaPruningConfig(structure="width", **{**FAST, **options}), show_progress=False)
    return pruner, report


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind,allocation", [("llama", "uniform"), ("qwen3", "alpha"), ("gqa8", "alpha"),
                                             ("mha", "uniform"), ("llama", "owl")])
def test_budget_is_met_and_blocks_stay_finite(kind, allocation, tiny_tokenizer):
    model = make_model(kind)
    before = block_params(model)
    hidden = model.config.hidden_size
    outputs = []
    _, report = prune(model, tiny_tokenizer, sparsity=0.3, allocation=allocation)
    after = block_params(model)
    removed = 1 - sum(after) / sum(before)
    assert removed == pytest.approx(0.3, abs=3 * hidden * len(before) / sum(before))
    for b, block_report, p_before, p_after in zip(model.model.layers, report.blocks, before, after):
        # within one MLP channel (3 * hidden weights) of the block's own allocated share
        assert abs((p_before - p_after) - block_report.target_sparsity * p_before) <= 3 * hidden
        assert block_report.achieved_sparsity == pytest.approx(1 - p_after / p_before)
        b.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        width = block_layout(b, 0).width
        assert width.num_attention_heads % width.num_key_value_heads == 0 and width.num_attention_heads >= 1
    if allocation != "uniform":
        assert len({t.target_sparsity for t in report.blocks}) > 1  # really non-uniform
    ids = tiny_tokenizer("the quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    assert torch.isfinite(logits(model, ids)).all()
    assert len(outputs) == len(before) and all(torch.isfinite(o).all() for o in outputs)


def test_query_heads_go_evenly_from_every_group_or_whole_groups(tiny_tokenizer):
    model = make_model("gqa8")
    prune(model, tiny_tokenizer, sparsity=0.3, allocation="uniform", head_sparsity=0.5)
    for block in model.model.layers:
        attention = block.self_attn
        assert (attention.q_proj.out_features, attention.k_proj.out_features) == (4 * 8, 2 * 8)
        assert attention.num_key_value_groups == 2
    model = make_model("gqa8")
    prune(model, tiny_tokenizer, sparsity=0.3, allocation="uniform", head_sparsity=0.5, prune_kv_groups=True)
    for block in model.model.layers:
        attention = block.self_attn
        assert (attention.q_proj.out_features, attention.k_proj.out_features) == (4 * 8, 1 * 8)
        assert attention.num_key_value_groups == 4


@pytest.mark.parametrize("kind,allocation", [("llama", "uniform"), ("qwen3", "uniform"), ("qwen3", "alpha"),
                                             ("gqa8", "alpha")])
def test_save_and_load_gives_identical_logits(kind, allocation, tiny_tokenizer, tmp_path):
    model = make_model(kind)
    pruner, _ = prune(model, tiny_tokenizer, sparsity=0.4, allocation=allocation)
    ids = torch.randint(0, TINY_VOCAB, (1, 24))
    expected = logits(model, ids)
    pruner.save_pretrained(tmp_path / "out", format="dense")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if allocation == "uniform":  # one width: a plain config stock transformers loads
        assert "quantization_config" not in config and "alpha_block_widths" not in config
        assert config["intermediate_size"] == model.config.intermediate_size < 128
    else:
        assert config["quantization_config"]["quant_method"] == "alpha_width"
        assert len(config["alpha_block_widths"]) == 3
        card = (tmp_path / "out" / "README.md").read_text()
        assert "Loading needs `optimum-alpha`" in card and "width pruning, least-squares refit" in card
        removed = float(re.search(r"([0-9.]+) of the block weights", card).group(1))
        assert removed == pytest.approx(0.4, abs=0.01)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.equal(logits(loaded, ids), expected)
    assert torch.equal(logits(load_pruned(tmp_path / "out"), ids), expected)


def test_non_uniform_checkpoint_fails_loudly_without_the_plugin(tiny_tokenizer, tmp_path):
    """Without optimum-alpha, transformers skips the unknown ``alpha_width`` method (a warning) and builds
    full-size blocks: the same as loading with the quantization config removed, which must raise."""
    pruner, _ = prune(make_model("llama"), tiny_tokenizer, sparsity=0.4, allocation="alpha")
    pruner.save_pretrained(tmp_path / "out", format="dense")
    config_path = tmp_path / "out" / "config.json"
    config = json.loads(config_path.read_text())
    del config["quantization_config"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_refit_lowers_reconstruction_error_on_the_same_selection(tiny_tokenizer):
    dense = make_model("llama")
    errors = {}
    for refitted in (True, False):
        _, report = prune(copy.deepcopy(dense), tiny_tokenizer, sparsity=0.5, allocation="uniform",
                          structured_refit=refitted)
        errors[refitted] = report.structured[0]  # block 0 sees the same inputs, hence the same selection
    for name in ("o_proj_error", "down_proj_error"):
        assert errors[True][name] < errors[False][name]


def test_refit_is_the_least_squares_solution():
    torch.manual_seed(0)
    weight, x = torch.randn(6, 10), torch.randn(200, 10) @ torch.randn(10, 10)
    gram, keep = x.T @ x, torch.tensor([0, 2, 3, 7, 9])
    fitted = refit(weight, gram, keep, damp=1e-9)
    exact = torch.linalg.lstsq(x[:, keep], x @ weight.T).solution.T
    assert torch.allclose(fitted, exact, atol=1e-4)
    assert reconstruction_error(weight, gram, fitted, keep) < reconstruction_error(weight, gram, weight[:, keep], keep)


def test_width_then_unstructured_in_one_config(tiny_tokenizer, tmp_path):
    model = make_model("llama")
    before = sum(block_params(model))
    pruner, report = prune(model, tiny_tokenizer, sparsity=0.25, allocation="alpha", unstructured_sparsity=0.5,
                           method="wanda")
    after = sum(block_params(model))
    assert 1 - after / before == pytest.approx(0.25, abs=0.05)
    assert report.total_sparsity == pytest.approx(0.5, abs=0.01)  # zeros among the weights that are left
    assert len(report.structured) == 3
    ids = torch.randint(0, TINY_VOCAB, (1, 16))
    expected = logits(model, ids)
    pruner.save_pretrained(tmp_path / "sparse", format="sparse")
    assert json.loads((tmp_path / "sparse" / "config.json").read_text())["quantization_config"]["quant_method"] \
        == "alpha_sparse"
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "sparse"), ids), expected)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("options,error", [
    ({"sparsity": 0.97}, "would remove all heads or all MLP channels"),
    ({"sparsity": 0.3, "head_sparsity": 0.9}, "removes all 2 query heads"),
    ({"sparsity": 0.3, "head_sparsity": 0.9, "prune_kv_groups": True}, "removes all 2 key/value groups"),
])
def test_impossible_fractions_fail_before_anything_changes(options, error, tiny_tokenizer):
    model = make_model("llama")
    weights = _weights(model)
    with pytest.raises(ConfigError, match=error):
        prune(model, tiny_tokenizer, **options)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


def test_nan_weight_in_a_late_block_fails_before_block_0_changes(tiny_tokenizer):
    model = make_model("llama")
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] = float("nan")
    weights = _weights(model)
    with pytest.raises(ModelStructureError, match="layers.2.mlp.up_proj"):
        prune(model, tiny_tokenizer, sparsity=0.3, allocation="uniform")
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in weights.items() if k != "model.layers.2.mlp.up_proj.weight")


def test_heads_not_dividing_kv_groups_and_unsupported_blocks_are_refused(tiny_tokenizer):
    model = make_model("llama")
    model.model.layers[1].self_attn.k_proj = torch.nn.Linear(64, 3 * 16, bias=False)  # 4 heads, 3 groups
    weights = _weights(model)
    with pytest.raises(ModelStructureError, match="do not divide into 3 key/value groups"):
        prune(model, tiny_tokenizer, sparsity=0.3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    with pytest.raises(ModelStructureError, match="GPT-2/OPT"):
        prune(make_model_gpt2(), tiny_tokenizer, sparsity=0.3)


def make_model_gpt2():
    return make_tiny_model("gpt2")


def test_width_only_options_need_structure_width():
    with pytest.raises(ConfigError, match="structure='width'"):
        AlphaPruningConfig(unstructured_sparsity=0.5)
    with pytest.raises(ConfigError, match="Unknown structure"):
        AlphaPruningConfig(structure="depth")
    with pytest.raises(ConfigError, match="granularity='block'"):
        AlphaPruningConfig(structure="width", granularity="matrix")


def test_cli_prunes_to_a_smaller_folder_that_from_pretrained_loads(tiny_tokenizer, tmp_path, capsys):
    from optimum_alpha.commands.cli import main

    source = tmp_path / "tiny"
    make_model("qwen3").save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    code = main(["prune", str(source), "--structure", "width", "--sparsity", "0.3", "--allocation", "alpha",
                 "--nsamples", "2", "--seqlen", "32", "--output", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "Block widths kept" in out
    assert float(re.search(r"block weights removed: ([0-9.]+)", out).group(1)) == pytest.approx(0.3, abs=0.03)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    original = AutoModelForCausalLM.from_pretrained(source)
    removed = 1 - sum(block_params(loaded)) / sum(block_params(original))
    assert removed == pytest.approx(0.3, abs=0.03)


@pytest.mark.real_model
def test_smollm2_width_30_percent_saves_smaller_and_loads_identically(tmp_path):
    """Uniform shares (a plain config, no plug-in needed); the alpha path is covered on tiny models."""
    pytest.importorskip("gguf")
    pruner = AlphaPruner.from_pretrained("smollm2-135m", show_progress=False, run_analysis=False)
    before = sum(block_params(pruner.model))
    config = AlphaPruningConfig(structure="width", sparsity=0.3, allocation="uniform", nsamples=2, seqlen=64)
    model, _ = pruner.prune(config, show_progress=False)
    assert 1 - sum(block_params(model)) / before == pytest.approx(0.3, abs=2e-3)
    pruner.save_pretrained(tmp_path / "out", format="dense")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.arange(1, 41)[None, :]
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_zero_fraction_leaves_the_model_unchanged(tiny_tokenizer):
    model = make_model("llama")
    ids = torch.randint(0, TINY_VOCAB, (1, 16))
    expected = logits(model, ids)
    prune(model, tiny_tokenizer, sparsity=0.0, allocation="uniform")
    assert torch.equal(logits(model, ids), expected)
