"""The decoder families the library is tested on: tiny random models (4 blocks, hidden 64) built from
transformers configs. ``tests/test_architectures.py`` runs every check on each of them, and
``benchmarks/architectures.py`` prints the supported-architecture table of ``docs/architectures.md`` from the
same list."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 320
POSITIONS = 256
WINDOW = 8  # sliding window, shorter than the calibration windows so that masks differ between layer types

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=POSITIONS,
              bos_token_id=0, eos_token_id=0, pad_token_id=0)
MOE = dict(num_experts_per_tok=2)

# name -> (model_type, config overrides, what the family exercises)
FAMILIES: dict[str, tuple[str, dict, str]] = {
    "llama": ("llama", {}, "dense, grouped-query attention"),
    "mistral": ("mistral", dict(sliding_window=WINDOW), "sliding-window attention in every layer"),
    "qwen2": ("qwen2", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2),
              "sliding window on some layers (layer_types)"),
    "qwen3": ("qwen3", dict(head_dim=16), "q/k norms"),
    "gemma2": ("gemma2", dict(sliding_window=WINDOW, head_dim=16), "alternating sliding/full attention"),
    "gemma3": ("gemma3_text", dict(sliding_window=WINDOW, head_dim=16, sliding_window_pattern=2),
               "per-type masks and per-type rotary embeddings"),
    "phi3": ("phi3", {}, "fused qkv and gate_up Linear layers"),
    "opt": ("opt", dict(ffn_dim=128, word_embed_proj_dim=64, num_key_value_heads=None), "biases, learned positions"),
    "gpt2": ("gpt2", dict(n_embd=64, n_layer=4, n_head=4, n_positions=POSITIONS), "Conv1D (transposed) weights"),
    "gpt_neox": ("gpt_neox", {}, "parallel attention/MLP, fused qkv"),
    "falcon": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2), "fused qkv, parallel blocks"),
    "mixtral": ("mixtral", dict(num_local_experts=4, **MOE), "MoE: fused experts [E, 2I, H], router"),
    "qwen3_moe": ("qwen3_moe", dict(num_experts=4, moe_intermediate_size=32, decoder_sparse_step=1, head_dim=16,
                                    **MOE), "MoE on every layer, q/k norms"),
    "gpt_oss": ("gpt_oss", dict(num_local_experts=4, head_dim=16, sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention"] * 2, **MOE),
                "MoE with transposed, interleaved gate/up and biases; sliding layers; attention sinks"),
    "deepseek_v3": ("deepseek_v3", dict(n_routed_experts=4, moe_intermediate_size=32, first_k_dense_replace=1,
                                        n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=16,
                                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
                                        n_shared_experts=1, rope_scaling=None, **MOE),
                    "MoE after a dense block, shared experts, multi-head latent attention"),
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random float32 model of the family, in eval mode."""
    model_type, overrides, _ = FAMILIES[name]
    settings = {**COMMON, **overrides}
    settings = {k: v for k, v in settings.items() if v is not None}
    if model_type == "gpt2":
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "num_key_value_heads", "max_position_embeddings"):
            settings.pop(key)
    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **settings)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
