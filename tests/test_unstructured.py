"""Checks the pipeline makes before and around pruning: every block parameter finite (norms too), eval mode."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_model
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.errors import ModelStructureError

CALIBRATION = {"nsamples": 2, "seqlen": 32}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_nan_in_a_norm_weight_fails_before_any_block_is_pruned(method, tiny_tokenizer):
    model = make_tiny_model("llama", layers=3)
    with torch.no_grad():
        model.model.layers[2].post_attention_layernorm.weight[5] = float("nan")
    before = model.model.layers[0].mlp.up_proj.weight.clone()
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False, run_analysis=False)
    with pytest.raises(ModelStructureError, match=r"model\.layers\.2\.post_attention_layernorm\.weight.*NaN/Inf"):
        pruner.prune(AlphaPruningConfig(sparsity=0.5, method=method, **CALIBRATION), show_progress=False)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)


def test_a_model_in_train_mode_is_calibrated_without_dropout_and_its_mode_restored(tiny_tokenizer):
    def pruned(train: bool, rng_seed: int) -> dict[str, torch.Tensor]:
        model = make_tiny_model("opt", layers=2)
        model.config.dropout = 0.5
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.5
        model.train(train)
        torch.manual_seed(rng_seed)  # the global RNG must not matter
        pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
        pruner.prune(AlphaPruningConfig(sparsity=0.5, method="sparsegpt", **CALIBRATION), show_progress=False)
        assert model.training is train  # the caller's mode comes back
        return {k: v.clone() for k, v in model.state_dict().items()}

    reference = pruned(False, 0)
    for train, seed in [(True, 1), (True, 2)]:
        other = pruned(train, seed)
        assert all(torch.equal(reference[k], other[k]) for k in reference)
