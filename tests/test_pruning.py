"""The sequential pruning pipeline on tiny Llama / OPT / GPT-2 models, and the Wanda / magnitude rules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.calibration import capture_block_inputs, run_block
from optimum_alpha.data import calibration_windows
from optimum_alpha.errors import AlphaPruningError, ConfigError, ModelStructureError
from optimum_alpha.model_utils import find_blocks
from optimum_alpha.pruning.magnitude import MagnitudePruner
from optimum_alpha.pruning.wanda import WandaPruner

CALIBRATION = {"nsamples": 4, "seqlen": 32}


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_every_layer_reaches_its_allocated_sparsity(tiny_model, tiny_tokenizer, method):
    pruner = AlphaPruner.from_pretrained(tiny_model, tokenizer=tiny_tokenizer, show_progress=False)
    model, report = pruner.prune(
        AlphaPruningConfig(sparsity=0.5, method=method, allocation="alpha", **CALIBRATION), show_progress=False
    )
    assert report.completed
    targets = report.layer_targets
    assert len(set(round(t, 6) for t in targets.values())) > 1  # alpha allocation is not uniform
    for block in pruner.block_weights():
        for matrix in block.matrices:
            full = matrix.name
            weight = matrix.read()
            achieved = float((weight == 0).sum()) / weight.numel()
            assert report.layers[full] == pytest.approx(achieved)
            # within one weight per row of the allocation (rounded per row for Wanda, per matrix for magnitude)
            assert abs(achieved - targets[full]) <= 1.0 / weight.shape[1]
    assert report.total_sparsity == pytest.approx(0.5, abs=0.01)
    logits = model(torch.randint(0, 300, (1, 16))).logits
    assert torch.isfinite(logits).all()


def test_wanda_prunes_the_same_count_in_every_row_and_keeps_high_activation_columns():
    torch.manual_seed(0)
    layer = nn.Linear(16, 6, bias=False)
    pruner = WandaPruner("layer")
    inputs = torch.randn(2, 10, 16)
    inputs[..., 3] *= 1000.0  # a dominant input feature: its column survives despite small weights
    with torch.no_grad():
        layer.weight[:, 3] = 1e-3
    pruner.add_batch(inputs)
    pruned = pruner.prune(layer.weight.data, 0.5)
    assert ((pruned == 0).sum(dim=1) == 8).all()
    assert (pruned[:, 3] != 0).all()
    plain = MagnitudePruner("layer").prune(layer.weight.data, 0.5)
    assert (plain[:, 3] == 0).all()  # magnitude alone would have removed it


def test_magnitude_uses_one_threshold_per_matrix():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    pruned = MagnitudePruner("l").prune(weight, 0.5)
    assert (pruned[0] == 0).all() and (pruned[1] != 0).all()


def test_pruning_keeps_dtype(tiny_tokenizer):
    from conftest import make_tiny_model

    model = make_tiny_model("llama").to(torch.bfloat16)
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    pruner.prune(AlphaPruningConfig(sparsity=0.6, allocation="uniform", **CALIBRATION), show_progress=False)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert weight.dtype == torch.bfloat16
    assert float((weight == 0).float().mean()) == pytest.approx(0.6, abs=1 / 64)


def test_captured_arguments_replay_block_exactly(tiny_model, tiny_tokenizer):
    """All keyword arguments (position embeddings, masks, flags) are captured: replaying block 0 alone gives
    the same hidden states as the full model's forward pass."""
    _, blocks = find_blocks(tiny_model)
    ids = torch.randint(0, 300, (2, 24))
    inputs = capture_block_inputs(tiny_model, blocks, ids)
    assert len(inputs) == 2 and all(len(store.extras) == 1 for store in inputs.per_block)  # stored once
    outputs = run_block(blocks[0], inputs, 0)
    with torch.no_grad():
        reference = tiny_model(ids[1:2], output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(outputs[1], reference, rtol=1e-5, atol=1e-5)


def test_second_block_sees_outputs_of_pruned_first_block(tiny_llama, tiny_tokenizer):
    seen = []
    handle = tiny_llama.model.layers[1].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True,
    )
    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, show_progress=False)
    pruner.prune(AlphaPruningConfig(sparsity=0.5, allocation="uniform", **CALIBRATION), show_progress=False)
    handle.remove()
    windows = calibration_windows(tiny_tokenizer, "c4", CALIBRATION["nsamples"], CALIBRATION["seqlen"], seed=0)
    with torch.no_grad():
        pruned_hidden = tiny_llama(windows[:1], output_hidden_states=True).hidden_states[1]
    # the capture pass calls block 1 once per window (recording its arguments, computing nothing); the next
    # call is the statistics pass over the windows batched, whose first window comes from the *pruned* block 0
    torch.testing.assert_close(seen[CALIBRATION["nsamples"]][:1], pruned_hidden, rtol=1e-5, atol=1e-5)


def test_default_seqlen_is_bounded():
    config = AlphaPruningConfig()
    assert config.resolve_seqlen(131072) == 2048
    assert config.resolve_seqlen(512) == 512
    with pytest.raises(ConfigError, match="exceeds the model's maximum positions"):
        AlphaPruningConfig(seqlen=4096).resolve_seqlen(2048)


def test_calibrated_method_without_tokenizer_is_a_clear_error(tiny_llama):
    pruner = AlphaPruner.from_pretrained(tiny_llama, show_progress=False)
    with pytest.raises(AlphaPruningError, match="needs calibration text"):
        pruner.prune(AlphaPruningConfig(method="wanda"), show_progress=False)
    _, report = pruner.prune(AlphaPruningConfig(method="magnitude", sparsity=0.3), show_progress=False)
    assert report.total_sparsity == pytest.approx(0.3, abs=0.01)


def test_model_without_blocks_is_rejected_with_the_paths_tried():
    with pytest.raises(ModelStructureError, match=r"tried the attribute paths model\.layers"):
        AlphaPruner.from_pretrained(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), show_progress=False)


def test_matrix_granularity_allocates_per_matrix(tiny_llama, tiny_tokenizer):
    pruner = AlphaPruner.from_pretrained(tiny_llama, tokenizer=tiny_tokenizer, show_progress=False)
    targets, _ = pruner.allocate(AlphaPruningConfig(sparsity=0.5, granularity="matrix"))
    block0 = [v for k, v in targets.items() if ".0." in k]
    assert len(set(block0)) > 1
    counts = {m.name: m.num_params for m in pruner.esd_report.matrices}
    total = sum(targets[k] * counts[k] for k in targets) / sum(counts.values())
    assert math.isclose(total, 0.5, abs_tol=1e-9)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.99])
def test_selection_masks_equal_a_stable_sort_even_with_ties(sparsity):
    from optimum_alpha.pruning.masks import matrix_mask, row_mask

    torch.manual_seed(0)
    for scores in (torch.randn(7, 13), torch.randint(0, 4, (7, 13)).float()):  # the second is full of ties
        k = round(13 * sparsity)
        expected = torch.zeros_like(scores, dtype=torch.bool)
        expected.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
        assert torch.equal(row_mask(scores, sparsity), expected)
        flat = torch.zeros(scores.numel(), dtype=torch.bool)
        flat[torch.sort(scores.flatten(), stable=True).indices[: round(scores.numel() * sparsity)]] = True
        assert torch.equal(matrix_mask(scores, sparsity), flat.view_as(scores))
