"""Block reconstruction: lowers the block's output error against the dense block, never changes the mask
(unstructured, N:M, experts), leaves the block itself to the pipeline, and runs inside prune()."""

from __future__ import annotations

import pytest
import torch

from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.calibration import capture_block_inputs, run_block
from optimum_alpha.errors import ConfigError
from optimum_alpha.matrices import model_weights
from optimum_alpha.model_utils import find_blocks
from optimum_alpha.pruning.masks import matrix_mask, nm_mask
from optimum_alpha.reconstruction import forward_levels, reconstruct_block
from tests.architectures import VOCAB, build


def calibration(model, vocab: int, samples: int = 4, length: int = 48):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (samples, length), generator=generator)
    _, blocks = find_blocks(model)
    return blocks, capture_block_inputs(model, blocks, ids)


def prune_by_magnitude(matrices, sparsity: float = 0.7, nm=None) -> dict[str, torch.Tensor]:
    out = {}
    for m in matrices:
        w = m.read()
        mask = nm_mask(w.abs(), *nm) if nm else matrix_mask(w.abs(), sparsity)
        out[m.name] = w.masked_fill(mask, 0.0)
    return out


def output_error(block, index, matrices, weights, inputs, dense_outputs) -> float:
    saved = {m.name: m.read().clone() for m in matrices}
    for m in matrices:
        m.write(weights[m.name])
    outputs = run_block(block, inputs, index)
    for m in matrices:
        m.write(saved[m.name])
    return float(sum((o - d).pow(2).sum() for o, d in zip(outputs, dense_outputs)))


@pytest.mark.parametrize("family, nm", [("llama", None), ("llama", (2, 4)), ("opt", None), ("gpt2", None),
                                        ("mixtral", None)])
def test_reconstruction_lowers_block_error_and_keeps_the_mask(family, nm):
    model = build(family)
    blocks, inputs = calibration(model, VOCAB)
    _, weights = model_weights(model)
    index = 1
    block, matrices = blocks[index], weights[index].matrices
    # the inputs of block 1, from the dense block 0
    inputs.hidden_states = run_block(blocks[0], inputs, 0)
    dense = {m.name: m.read().clone() for m in matrices}
    dense_outputs = run_block(block, inputs, index)
    pruned = prune_by_magnitude(matrices, nm=nm)
    result = reconstruct_block(block, index, matrices, pruned, inputs, iterations=30)
    for m in matrices:
        assert torch.equal(m.read(), dense[m.name])  # the block itself is the pipeline's to write
        assert torch.equal(result.weights[m.name] != 0, pruned[m.name] != 0), m.name
    before = output_error(block, index, matrices, pruned, inputs, dense_outputs)
    after = output_error(block, index, matrices, result.weights, inputs, dense_outputs)
    assert after < 0.8 * before, (before, after)
    assert result.seconds > 0


def test_levels_follow_the_forward_pass():
    model = build("llama")
    blocks, inputs = calibration(model, VOCAB)
    _, weights = model_weights(model)
    levels = forward_levels(blocks[0], 0, weights[0].matrices, inputs)
    names = [[m.name.rsplit(".", 1)[-1] for m in level] for level in levels]
    assert names == [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]


def test_prune_with_block_reconstruction_keeps_sparsity_and_lowers_perplexity(tiny_llama, tiny_tokenizer):
    from optimum_alpha.evaluate import perplexity

    text_model = tiny_llama
    dense = {k: v.clone() for k, v in text_model.state_dict().items()}
    pruner = AlphaPruner.from_pretrained(text_model, tokenizer=tiny_tokenizer, show_progress=False)
    options = dict(sparsity=0.7, method="magnitude", allocation="uniform", nsamples=4, seqlen=64)
    _, plain = pruner.prune(AlphaPruningConfig(**options), show_progress=False)
    masks = {name: p != 0 for name, p in text_model.state_dict().items()}
    plain_ppl = perplexity(text_model, tiny_tokenizer, seqlen=64, max_windows=2, show_progress=False)
    text_model.load_state_dict(dense)
    _, report = pruner.prune(AlphaPruningConfig(**options, reconstruct="block"), show_progress=False)
    assert report.total_sparsity == pytest.approx(plain.total_sparsity, abs=1e-12)
    assert report.reconstruction_s > 0
    assert all(torch.equal(p != 0, masks[name]) for name, p in text_model.state_dict().items())
    refit_ppl = perplexity(text_model, tiny_tokenizer, seqlen=64, max_windows=2, show_progress=False)
    assert refit_ppl < plain_ppl


@pytest.mark.parametrize("field, value, message", [
    ("reconstruct", "layer", "Unknown reconstruct"),
    ("reconstruct_iters", 0, "reconstruct_iters must be >= 1"),
    ("reconstruct_damp", -1.0, "reconstruct_damp must be >= 0"),
])
def test_bad_reconstruction_options_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        AlphaPruningConfig(**{field: value})
