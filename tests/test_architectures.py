"""Every decoder family of ``tests/architectures.py``: exact per-block replay, every block weight pruned or
ignored on purpose, per-matrix targets met by every pruner, sparse checkpoints round-trip bitwise, and MoE
experts calibrated on exactly the tokens routed to them."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open
from optimum_alpha.testing.architectures import FAMILIES, VOCAB, WINDOW, build

from optimum_alpha import AlphaPruner, AlphaPruningConfig, load_pruned
from optimum_alpha.calibration import block_output, capture_block_inputs, run_block
from optimum_alpha.errors import ConfigError
from optimum_alpha.matrices import model_weights
from optimum_alpha.model_utils import find_blocks
from optimum_alpha.pruning.sparsegpt import SparseGPTPruner
from optimum_alpha.statistics import InputSquaredNorms, collect_block_statistics

MOE = ("mixtral", "qwen3_moe", "gpt_oss", "deepseek_v3")
CALIBRATION = {"nsamples": 2, "seqlen": 4 * WINDOW}
# ALPS at its paper defaults (300 ADMM iterations per matrix) costs minutes over 15 families; a short run
# exercises the same code paths (tests/test_alps.py checks the solver's quality at full settings).
FAST_OPTIONS = {"alps": {"alps_max_iter": 12, "alps_pcg_iters": 3}}


def windows(count: int = 2, length: int = 4 * WINDOW) -> torch.Tensor:
    return torch.randint(1, VOCAB, (count, length), generator=torch.Generator().manual_seed(0))


def block_weight_names(model: torch.nn.Module) -> dict[str, int]:
    """Every ≥2-D non-bias parameter inside the blocks, with its size."""
    path, blocks = find_blocks(model)
    return {f"{path}.{i}.{name}": p.numel() for i, block in enumerate(blocks)
            for name, p in block.named_parameters() if p.dim() >= 2 and not name.endswith("bias")}


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_of_every_block_equals_the_models_own_forward(family):
    """Also batched: 3 windows, 2 per block forward (one full batch, one ragged)."""
    model = build(family)
    _, blocks = find_blocks(model)
    ids = windows(3)
    outputs: dict[int, list[torch.Tensor]] = {}
    handles = [block.register_forward_hook(lambda m, a, o, i=i: outputs.setdefault(i, []).append(block_output(o)))
               for i, block in enumerate(blocks)]
    with torch.no_grad():
        hidden = [model(w[None], use_cache=False, output_hidden_states=True).hidden_states for w in ids]
    for handle in handles:
        handle.remove()
    for batch_size in (1, 2):
        inputs = capture_block_inputs(model, blocks, ids, batch_size=batch_size)
        assert inputs.batch_size == batch_size
        for index, block in enumerate(blocks):
            inputs.hidden_states = run_block(block, inputs, index)
            assert len(inputs.hidden_states) == len(ids)
            for sample, replayed in enumerate(inputs.hidden_states):
                torch.testing.assert_close(replayed, outputs[index][sample], rtol=0, atol=1e-5)
                if index < len(blocks) - 1:
                    torch.testing.assert_close(replayed, hidden[sample][index + 1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "opt", "gemma3", "mixtral"])
def test_capture_computes_no_block_beyond_one_structure_probe(family):
    """Capture records arguments only: of all block forwards, one (block 0 on window 0) runs for real, to learn
    the output structure the model expects; the blocks are then restored."""
    model = build(family)
    _, blocks = find_blocks(model)
    calls = []
    handles = [module.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
               for i, block in enumerate(blocks) for module in block.children()]
    inputs = capture_block_inputs(model, blocks, windows(3))
    assert set(calls) == {0} and len(inputs) == 3 and all(len(s.extra_index) == 3 for s in inputs.per_block)
    calls.clear()
    with torch.no_grad():
        model(windows(1), use_cache=False)
    for handle in handles:
        handle.remove()
    assert set(calls) == set(range(len(blocks)))  # the real forwards are back


def test_sliding_and_full_layers_are_replayed_with_their_own_masks():
    model = build("gemma2")
    _, blocks = find_blocks(model)
    inputs = capture_block_inputs(model, blocks, windows())
    masks = [store.extras[0][1]["attention_mask"] for store in inputs.per_block]
    assert model.config.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert not torch.equal(masks[0], masks[1]) and masks[0] is masks[2]  # per type, each stored once


@pytest.mark.parametrize("family", FAMILIES)
def test_every_block_weight_is_a_prunable_matrix_or_ignored_on_purpose(family):
    model = build(family)
    _, blocks = model_weights(model)
    assert not [name for block in blocks for name in block.uncovered]
    params = sum(m.numel for block in blocks for m in block.matrices)
    ignored = {name: n for block in blocks for name, n in block.ignored.items()}
    assert params + sum(ignored.values()) == sum(block_weight_names(model).values())
    if family in MOE:
        assert ignored and all(".gate." in name or ".router." in name for name in ignored)  # routers only
        assert any(".experts.3.down_proj" in m.name for block in blocks for m in block.matrices)
    else:
        assert not ignored


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "alps"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_matrix_reaches_its_target(family, method, tiny_tokenizer):
    model = build(family)
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    config = AlphaPruningConfig(sparsity=0.5, method=method, **CALIBRATION, **FAST_OPTIONS.get(method, {}))
    _, report = pruner.prune(config, show_progress=False)
    matrices = [m for block in model_weights(model)[1] for m in block.matrices]
    assert {m.name for m in matrices} == set(report.layer_targets)
    zeros = 0
    for matrix in matrices:
        weight = matrix.read()
        assert torch.isfinite(weight).all()
        pruned = int((weight == 0).sum())
        zeros += pruned
        # within one weight per row of the target (Wanda rounds per row, SparseGPT per column block)
        assert abs(pruned - report.layer_targets[matrix.name] * matrix.numel) <= matrix.shape[0], matrix.name
    total = sum(m.numel for m in matrices)
    assert report.total_sparsity == pytest.approx(zeros / total)
    assert report.total_sparsity == pytest.approx(0.5, abs=0.01)
    everything = sum(block_weight_names(model).values())
    assert report.block_weight_sparsity == pytest.approx(zeros / everything)
    with torch.no_grad():
        assert torch.isfinite(model(windows(1)).logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_checkpoint_round_trips_bitwise(family, tmp_path):
    model = build(family)
    pruner = AlphaPruner.from_pretrained(model, show_progress=False)
    pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude"), show_progress=False)
    path = pruner.save_pretrained(tmp_path / family, format="sparse")
    stored = {}
    for shard in path.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            stored.update({key: handle.get_tensor(key) for key in handle.keys()})
    for key, value in stored.items():  # every pruned weight is stored as a bitmask, experts included
        if value.dim() >= 2 and value.dtype.is_floating_point:
            assert float((value == 0).float().mean()) < 0.25, f"{key} is stored dense"
    if family in MOE:
        assert any("experts" in key and key.endswith("compressed") for key in stored)
    loaded = load_pruned(path)
    expected = model.state_dict()
    got = loaded.state_dict()
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value.view(torch.uint8) if value.dtype.is_floating_point else value,
                           got[key].view(torch.uint8) if got[key].dtype.is_floating_point else got[key]), key


def test_mixtral_at_50_percent_has_half_of_its_expert_weights_at_zero(tiny_tokenizer):
    model = build("mixtral")
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    _, report = pruner.prune(AlphaPruningConfig(sparsity=0.5, method="wanda", **CALIBRATION), show_progress=False)
    experts = [layer.mlp.experts for layer in model.model.layers]
    zeros = sum(int((p == 0).sum()) for e in experts for p in (e.gate_up_proj, e.down_proj))
    total = sum(p.numel() for e in experts for p in (e.gate_up_proj, e.down_proj))
    assert zeros / total == pytest.approx(0.5, abs=0.01)
    assert "total sparsity 0.5" in report.summary()
    assert "kept dense on purpose" in report.summary()  # the routers, named in report.ignored
    assert all(".mlp.gate." in name for name in report.ignored)


def reference_expert_statistics(model: torch.nn.Module, block_index: int, ids: torch.Tensor):
    """Slow reference: one token and one routed expert at a time, from the dense model's own routing."""
    experts = model.model.layers[block_index].mlp.experts
    calls = []
    handle = experts.register_forward_pre_hook(lambda m, args: calls.append((args[0].detach(), args[1])))
    with torch.no_grad():
        for window in ids:
            model(window[None], use_cache=False)
    handle.remove()
    sums: dict[str, torch.Tensor] = {}
    grams: dict[str, list] = {}

    def add(name: str, x: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0) + x.pow(2)
        grams.setdefault(name, []).append(x)

    prefix = f"model.layers.{block_index}.mlp.experts"
    for hidden, index in calls:
        for t in range(hidden.shape[0]):
            for e in index[t].tolist():
                x = hidden[t]
                w = experts.gate_up_proj[e]
                proj = x @ w if experts.is_transposed else w @ x
                if experts.has_bias:
                    proj = proj + experts.gate_up_proj_bias[e]
                inter = experts._apply_gate(proj[None])[0]
                add(f"{prefix}.{e}.gate_proj", x)
                add(f"{prefix}.{e}.up_proj", x)
                add(f"{prefix}.{e}.down_proj", inter)
    hessians = {k: 2 * torch.stack(v).T @ torch.stack(v) / len(v) for k, v in grams.items()}
    return sums, hessians


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_per_expert_statistics_come_from_exactly_the_routed_tokens(family):
    model = build(family)
    _, blocks = find_blocks(model)
    ids = windows()
    index = 1
    matrices = [m for m in model_weights(model)[1][index].matrices if m.is_expert]
    norms = {m.name: InputSquaredNorms() for m in matrices}
    hessians = {m.name: SparseGPTPruner(m.name) for m in matrices}
    inputs = capture_block_inputs(model, blocks, ids)
    for i in range(index):
        inputs.hidden_states = run_block(blocks[i], inputs, i)
    collect_block_statistics(blocks[index], index, matrices, norms, inputs)
    collect_block_statistics(blocks[index], index, matrices, hessians, inputs)
    sums, reference_hessians = reference_expert_statistics(model, index, ids)
    assert set(sums) == {name for name, s in norms.items() if s.sums is not None}
    for name, value in sums.items():
        torch.testing.assert_close(norms[name].sums.float(), value.float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(hessians[name].hessian, reference_hessians[name].float(), rtol=1e-4, atol=1e-5)


def test_an_expert_without_calibration_tokens_is_pruned_by_magnitude_and_named(tiny_tokenizer, caplog):
    model = build("mixtral")
    for layer in model.model.layers:  # the router never picks expert 3
        def never_three(module, args, output):
            logits, scores, indices = output
            return logits, scores, torch.where(indices == 3, torch.zeros_like(indices), indices)

        layer.mlp.gate.register_forward_hook(never_three)
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    with caplog.at_level(logging.WARNING):
        _, report = pruner.prune(AlphaPruningConfig(sparsity=0.5, method="wanda", allocation="uniform", **CALIBRATION),
                                 show_progress=False)
    assert len(report.uncalibrated) == 3 * 4 and all(".experts.3." in n for n in report.uncalibrated)
    assert "no calibration token" in caplog.text and report.uncalibrated[0] in caplog.text
    assert "experts.3.down_proj" in report.summary()
    down = model.model.layers[0].mlp.experts.down_proj[3]
    assert int((down == 0).sum()) == down.numel() // 2  # still pruned to its target


class Custom3D(torch.nn.Module):
    """A block weight nothing knows how to prune (not Linear, not a transformers experts module)."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = torch.nn.Parameter(torch.randn(2, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_an_unprunable_block_weight_fails_naming_it_and_the_ignore_option():
    model = build("llama")
    model.model.layers[1].extra = Custom3D()
    pruner = AlphaPruner.from_pretrained(model, show_progress=False, run_analysis=False)
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    with pytest.raises(ConfigError, match=r"model\.layers\.1\.extra\.kernel.*ignore="):
        pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude"), show_progress=False)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)  # nothing was pruned
    _, report = pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude", ignore=["re:.*extra"]),
                             show_progress=False)
    assert report.ignored == {"model.layers.1.extra.kernel": 32}
    assert report.block_weight_sparsity < report.total_sparsity


def test_ignore_keeps_matching_matrices_dense_and_out_of_the_budget():
    model = build("mixtral")
    pruner = AlphaPruner.from_pretrained(model, show_progress=False, run_analysis=False)
    _, report = pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude", ignore=["re:.*self_attn"]),
                             show_progress=False)
    assert not any("self_attn" in name for name in report.layer_targets)
    assert all(int((model.model.layers[0].self_attn.q_proj.weight == 0).sum()) == 0 for _ in [0])
    assert any(name.endswith("self_attn.q_proj") for name in report.ignored)
    assert report.total_sparsity == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ConfigError, match="regular expression"):
        AlphaPruningConfig(ignore=["re:("])
