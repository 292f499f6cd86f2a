"""Zero-shot and KL divergence on the real SmolLM2-135M (short: 20 documents, 2 windows of 128 tokens)."""

from __future__ import annotations

import pytest

from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.evaluate import kl_divergence, zero_shot
from optimum_alpha.evaluation.kl import DenseReference
from optimum_alpha.evaluation.local_tasks import shipped_task_file
from test_evaluation import direct_choice

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    return AlphaPruner.from_pretrained("smollm2-135m", show_progress=False)


def test_smollm2_shipped_task_through_lm_eval_equals_direct_log_likelihood(smollm2):
    import json

    rows = [json.loads(line) for line in shipped_task_file().with_suffix(".jsonl").read_text().splitlines()][:20]
    result = zero_shot(smollm2.model, smollm2.tokenizer, str(shipped_task_file()), limit=20)
    direct = sum(direct_choice(smollm2.model, smollm2.tokenizer, r["context"], r["choices"]) == r["label"]
                 for r in rows) / len(rows)
    entry = result.tasks["wikitext2_continuation"]
    assert entry["samples"] == 20
    assert entry["acc"] == pytest.approx(direct, abs=1e-12)
    assert entry["acc"] > 0.4  # a trained model beats chance (0.25) on its own language


def test_smollm2_kl_is_zero_to_itself_and_grows_with_sparsity(smollm2):
    model, tokenizer = smollm2.model, smollm2.tokenizer
    itself = kl_divergence(model, model, tokenizer, seqlen=128, max_windows=2)
    assert itself.kl_mean == 0.0 and itself.top1_agreement == 1.0
    dense = DenseReference.capture(model, tokenizer, seqlen=128, max_windows=2)
    kls = []
    for sparsity in (0.2, 0.5):  # magnitude pruning to 50 % of a 20 %-pruned model equals pruning to 50 %
        smollm2.prune(AlphaPruningConfig(sparsity=sparsity, method="magnitude", allocation="uniform"),
                      show_progress=False)
        kls.append(dense.compare(model))
    assert 0 < kls[0].kl_mean < kls[1].kl_mean
    assert kls[0].top1_agreement > kls[1].top1_agreement
    # Perplexity need not move with it: on these 256 tokens 20 % magnitude pruning lowered it (45.07 vs 46.29
    # dense) while the KL divergence was already 0.29 nats/token, the reason KL is reported at all.
    assert kls[1].perplexity > dense.perplexity
