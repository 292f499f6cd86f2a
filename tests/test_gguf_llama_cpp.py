"""llama.cpp runs our GGUF files (issue 21): logits and perplexity agree with transformers on the same weights.

Marked ``llama_cpp``: runs wherever ``llama-cpp-python`` is installed (it compiles llama.cpp, about 45 minutes
on the shared 2-core machine, so CI does not build it; see docs/gguf.md). Width-pruned files with per-layer
widths (llama.cpp architecture ``deci``) have no other reader, so they are checked here against the
in-memory model.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from architectures import COMMON
from test_gguf import prune_half, tokenizer  # noqa: F401  (the tokenizer fixture)
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_alpha.gguf import dequantized_state_dict, write_gguf
from optimum_alpha.gguf import llama_cpp as engine

pytestmark = pytest.mark.llama_cpp
pytest.importorskip("llama_cpp")

WINDOW = 48


def peaked(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model with large random weights, so that its logits are peaked and wiring mistakes show."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(name, **{**COMMON, "initializer_range": 0.25, "max_position_embeddings": 128})
    if name == "qwen2":
        config.use_sliding_window = False
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def windows(count: int = 3, length: int = WINDOW) -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(1, COMMON["vocab_size"], (length,), generator=generator).tolist() for _ in range(count)]


def reference(model: torch.nn.Module, gguf_type: str) -> torch.nn.Module:
    """The model with exactly the file's (dequantised) weights."""
    quantized = copy.deepcopy(model)
    quantized.load_state_dict(dequantized_state_dict(model, gguf_type), strict=False)
    return quantized


def compare(model: torch.nn.Module, path, gguf_type: str) -> tuple[float, float, float]:
    """(relative logit error, llama.cpp perplexity, transformers perplexity) on the same token windows."""
    quantized = reference(model, gguf_type)
    errors, ours, theirs = [], 0.0, 0.0
    with engine.open_model(path, n_ctx=WINDOW, logits_all=True, n_batch=WINDOW) as llm:
        for ids in windows():
            got = engine.window_logits(llm, ids)
            with torch.no_grad():
                want = quantized(torch.tensor([ids])).logits[0].numpy()
            errors.append(np.linalg.norm(got - want) / np.linalg.norm(want - want.mean(axis=1, keepdims=True)))
            ours += engine.log_softmax_nll(got[:-1], ids[1:])
            theirs += engine.log_softmax_nll(want[:-1], ids[1:])
    tokens = len(windows()) * (WINDOW - 1)
    return max(errors), float(np.exp(ours / tokens)), float(np.exp(theirs / tokens))


@pytest.mark.parametrize("name,gguf_type", [("llama", "f16"), ("llama", "q8_0"), ("llama", "q4_0"),
                                            ("qwen2", "q8_0"), ("mistral", "auto:5.0")])
def test_llama_cpp_agrees_with_transformers_on_pruned_models(name, gguf_type, tokenizer, tmp_path):  # noqa: F811
    model = prune_half(peaked(name))
    write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type=gguf_type, show_progress=False)
    error, ppl_cpp, ppl_hf = compare(model, tmp_path / "m.gguf", gguf_type)
    assert error < tolerance(gguf_type), error
    assert ppl_cpp == pytest.approx(ppl_hf, rel=0.01)


def tolerance(gguf_type: str) -> float:
    """Relative logit error allowed: llama.cpp multiplies quantised weights with activations it quantises to
    8 bits itself (about 3.5 % on these peaked models, against 0.2 % for f16 weights)."""
    return 0.02 if gguf_type in ("f16", "bf16") else 0.06


def test_a_wrongly_ordered_file_is_caught(tokenizer, tmp_path, monkeypatch):  # noqa: F811
    """The check above can fail: without llama.cpp's q/k row order the logits are far off."""
    from optimum_alpha.gguf import writer

    model = peaked("llama")
    monkeypatch.setattr(writer, "permute_rows", lambda data, heads: data)
    write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="f16", show_progress=False)
    error, _, _ = compare(model, tmp_path / "m.gguf", "f16")
    assert error > 0.5  # measured 1.27 (against 0.002 with the row order)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_per_block_widths_run_in_llama_cpp(name, tokenizer, tmp_path):  # noqa: F811
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    model = peaked(name)
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False)
    pruner.prune(AlphaPruningConfig(structure="width", sparsity=0.3, allocation="alpha", nsamples=4, seqlen=32,
                                    calibration_dataset="c4"), show_progress=False)
    heads = {layer.self_attn.q_proj.out_features for layer in model.model.layers}
    ffn = {layer.mlp.gate_proj.out_features for layer in model.model.layers}
    assert len(heads) > 1 or len(ffn) > 1
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q8_0", show_progress=False)
    assert summary.arch == "deci"
    error, ppl_cpp, ppl_hf = compare(model, tmp_path / "m.gguf", "q8_0")
    assert error < tolerance("q8_0"), error
    assert ppl_cpp == pytest.approx(ppl_hf, rel=0.01)
    assert isinstance(engine.generate_text(tmp_path / "m.gguf", "the", max_tokens=4), str)


@pytest.mark.real_model
def test_smollm2_perplexity_in_llama_cpp_matches_transformers(tmp_path):
    from optimum_alpha import AlphaPruner
    from optimum_alpha.data import evaluation_tokens
    from optimum_alpha.evaluate import window_perplexity

    pruner = AlphaPruner.from_pretrained("smollm2-135m", show_progress=False)
    # the dense model: random 50 % zeros put its perplexity near 1e9, where 1 % says nothing
    model = pruner.model
    write_gguf(model, tmp_path / "s.gguf", tokenizer=pruner.tokenizer, gguf_type="q8_0", show_progress=False)
    chunks = evaluation_tokens(pruner.tokenizer, "wikitext2")[:256].reshape(2, 128)  # the evaluation protocol's
    ppl_hf = window_perplexity(reference(model, "q8_0"), chunks)
    assert engine.perplexity(tmp_path / "s.gguf", chunks.tolist()) == pytest.approx(ppl_hf, rel=0.01)
    assert engine.generate_text(tmp_path / "s.gguf", "The capital of France is", max_tokens=8).strip()
