"""Shared fixtures: a small offline BPE tokenizer and tiny random Llama / OPT / GPT-2 models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
)

from optimum_alpha.data import load_texts  # noqa: E402

TINY_VOCAB = 320
TINY_POSITIONS = 256


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in ~0.1 s on the shipped C4 sample: real tokenization, no download."""
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=["[UNK]"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(load_texts("c4")[:40], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def make_tiny_model(arch: str, seed: int = 0, layers: int = 2) -> torch.nn.Module:
    """A tiny random decoder-only model of the given architecture (float32, eval mode)."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=TINY_VOCAB, max_position_embeddings=TINY_POSITIONS,
            bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
        model = LlamaForCausalLM(config)
    elif arch == "opt":
        config = OPTConfig(
            hidden_size=64, ffn_dim=128, num_hidden_layers=layers, num_attention_heads=4, vocab_size=TINY_VOCAB,
            max_position_embeddings=TINY_POSITIONS, word_embed_proj_dim=64, bos_token_id=0, eos_token_id=0,
            pad_token_id=0,
        )
        model = OPTForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(
            n_embd=64, n_layer=layers, n_head=4, vocab_size=TINY_VOCAB, n_positions=TINY_POSITIONS,
            bos_token_id=0, eos_token_id=0,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    return model.eval()


@pytest.fixture(params=["llama", "opt", "gpt2"])
def tiny_model(request) -> torch.nn.Module:
    return make_tiny_model(request.param)


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return make_tiny_model("llama", layers=3)
