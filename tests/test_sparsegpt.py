"""SparseGPT: reconstruction beats magnitude and Wanda, exact sparsity, half precision, pipeline run."""

from __future__ import annotations

import pytest
import torch

from optimum_alpha import AlphaPruningConfig
from optimum_alpha.data import load_texts
from optimum_alpha.errors import ConfigError
from optimum_alpha.pruner import AlphaPruner
from optimum_alpha.pruning import get_pruner_class
from optimum_alpha.pruning.sparsegpt import SparseGPTPruner


def correlated_inputs(tokens: int, features: int, seed: int) -> torch.Tensor:
    """Inputs with correlated features and uneven scales, as real activations have."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen) / features**0.5
    scales = torch.rand(features, generator=gen) * 3 + 0.1
    return (torch.randn(tokens, features, generator=gen) @ mixing) * scales


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.norm(x @ weight.T - x @ pruned.T))


def prune_with(method: str, weight: torch.Tensor, x: torch.Tensor, sparsity: float, nm=None) -> torch.Tensor:
    pruner = get_pruner_class(method)("layer")
    for chunk in x.split(64):
        pruner.add_batch(chunk.unsqueeze(0))
    return pruner.prune(weight, sparsity, nm)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.7, None), (0.5, (2, 4))])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(seed, sparsity, nm):
    gen = torch.Generator().manual_seed(100 + seed)
    weight = torch.randn(48, 64, generator=gen)
    x = correlated_inputs(512, 64, seed)
    errors = {m: reconstruction_error(weight, prune_with(m, weight, x, sparsity, nm), x)
              for m in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] < errors["wanda"]
    assert errors["sparsegpt"] < errors["magnitude"]


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.93])
@pytest.mark.parametrize("blocksize", [7, 16, 128])
def test_achieved_sparsity_is_exact(sparsity, blocksize):
    weight = torch.randn(30, 50, generator=torch.Generator().manual_seed(3))
    x = correlated_inputs(200, 50, 4)
    pruner = SparseGPTPruner("layer", blocksize=blocksize)
    pruner.add_batch(x)
    pruned = pruner.prune(weight, sparsity)
    assert int((pruned == 0).sum()) == round(weight.numel() * sparsity)


def test_zero_sparsity_leaves_the_weights_unchanged():
    weight = torch.randn(12, 40, generator=torch.Generator().manual_seed(12))
    pruner = SparseGPTPruner("layer", blocksize=16)
    pruner.add_batch(correlated_inputs(100, 40, 13))
    assert torch.equal(pruner.prune(weight, 0.0), weight)


def test_nm_pattern_holds_in_every_group():
    weight = torch.randn(16, 48, generator=torch.Generator().manual_seed(5))
    pruner = SparseGPTPruner("layer", blocksize=10)  # not a multiple of 8: rounded up
    pruner.add_batch(correlated_inputs(128, 48, 6))
    pruned = pruner.prune(weight, 0.0, (3, 8))
    kept_per_group = (pruned != 0).reshape(16, 6, 8).sum(dim=2)
    assert torch.all(kept_per_group == 3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_keep_their_dtype(dtype):
    weight32 = torch.randn(24, 32, generator=torch.Generator().manual_seed(7))
    x = correlated_inputs(256, 32, 8)
    pruner = SparseGPTPruner("layer")
    pruner.add_batch(x.to(dtype))
    assert pruner.hessian.dtype == torch.float32
    pruned = pruner.prune(weight32.to(dtype), 0.5)
    assert pruned.dtype == dtype
    assert torch.isfinite(pruned).all()
    assert int((pruned == 0).sum()) == weight32.numel() // 2
    # Same decisions as the float32 computation up to half-precision rounding of the inputs.
    full = prune_with("sparsegpt", weight32.to(dtype).float(), x.to(dtype).float(), 0.5)
    agreement = float(((pruned == 0) == (full == 0)).float().mean())
    assert agreement > 0.97


def test_dead_inputs_are_pruned_and_do_not_break_the_inverse():
    x = correlated_inputs(256, 32, 9)
    x[:, [3, 17]] = 0.0
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(10))
    pruner = SparseGPTPruner("layer", percdamp=0.0)
    pruner.add_batch(x)
    pruned = pruner.prune(weight, 0.25)
    assert torch.isfinite(pruned).all()
    assert torch.all(pruned[:, [3, 17]] == 0)


def test_hessian_is_a_running_mean_of_token_outer_products():
    x = correlated_inputs(300, 12, 11)
    pruner = SparseGPTPruner("layer")
    for chunk in x.split([1, 99, 200]):
        pruner.add_batch(chunk)
    assert pruner.tokens == 300
    torch.testing.assert_close(pruner.hessian, 2 * x.T @ x / 300, rtol=1e-4, atol=1e-5)
    pruner.free()  # the pipeline frees each layer's Hessian as soon as the layer is pruned
    assert pruner.hessian is None


def test_invalid_options_raise_config_errors():
    with pytest.raises(ConfigError, match="percdamp"):
        AlphaPruningConfig(method="sparsegpt", percdamp=-1)  # validated once, in the config
    with pytest.raises(ConfigError, match="blocksize"):
        AlphaPruningConfig(method="sparsegpt", blocksize=0)
    pruner = SparseGPTPruner("layer")
    pruner.add_batch(torch.randn(20, 10))
    with pytest.raises(ConfigError, match="multiple of M"):
        pruner.prune(torch.randn(4, 10), 0.0, (2, 4))


def test_pipeline_prunes_a_tiny_model_with_sparsegpt(tiny_model, tiny_tokenizer, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("\n\n".join(load_texts("c4")[:8]))  # a short file tokenizes in milliseconds
    pruner = AlphaPruner.from_pretrained(tiny_model, tokenizer=tiny_tokenizer, show_progress=False)
    config = AlphaPruningConfig(sparsity=0.6, method="sparsegpt", allocation="uniform", nsamples=2, seqlen=32,
                                calibration_dataset=text, blocksize=16)
    _, report = pruner.prune(config, show_progress=False)
    assert report.completed
    assert report.total_sparsity == pytest.approx(0.6, abs=2e-3)
    ids = torch.randint(0, 300, (1, 16))
    assert torch.isfinite(tiny_model(ids).logits).all()
