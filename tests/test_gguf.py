"""GGUF export (issue 21): transformers' own GGUF reader reads our files back bit for bit, types, refusals, atomicity.

The reading side is never our code: ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` and
``gguf.GGUFReader`` (llama.cpp's Python package). llama.cpp itself runs the files in ``test_gguf_llama_cpp.py``.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from architectures import COMMON, build
from gguf import GGUFReader
from tokenizers import decoders
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from optimum_alpha.errors import ConfigError, ModelStructureError
from optimum_alpha.gguf import dequantized_state_dict, write_gguf
from optimum_alpha.gguf.plan import choose_types
from optimum_alpha.gguf.types import TYPES, parse_type, zero_survival

ROUND_TRIP_TYPES = ("f16", "bf16", "q8_0", "q5_0", "q4_0")


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer) -> PreTrainedTokenizerFast:
    """The tiny byte-level BPE with the ByteLevel decoder every real byte-level tokenizer has."""
    backend = copy.deepcopy(tiny_tokenizer.backend_tokenizer)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def family(name: str) -> torch.nn.Module:
    """A tiny model of the family; Qwen3 with head_dim 128, the only one transformers' qwen3 GGUF reader knows."""
    if name != "qwen3":
        return build(name)
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen3", **{**COMMON, "head_dim": 128})
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def prune_half(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero half of every block matrix at random, as any unstructured pruner leaves it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".layers." in name and parameter.dim() == 2:
                parameter[torch.rand(parameter.shape, generator=generator) < 0.5] = 0
    return model


def read_back(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def check_round_trip(model, path, gguf_type: str) -> None:
    """The reader's weights are our dequantised weights bit for bit, pruned zeros stay 0, logits agree."""
    expected = dequantized_state_dict(model, gguf_type)
    loaded = read_back(path)
    state = loaded.state_dict()
    assert set(expected) <= set(state)
    for name, weight in expected.items():
        read = state[name]
        if read.shape != weight.shape:  # FFN channels padded to whole blocks of 32: zeros, and only those
            inside = tuple(slice(0, n) for n in weight.shape)
            assert read.count_nonzero() == read[inside].count_nonzero() and read.shape[0] % 32 + read.shape[-1] % 32 == 0
            read = read[inside]
        assert torch.equal(read, weight), name
        original = model.state_dict()[name]
        if ".layers." in name and original.dim() == 2:
            assert torch.all(read[original == 0] == 0), name
    quantized = copy.deepcopy(model)
    quantized.load_state_dict(expected, strict=False)
    ids = torch.randint(0, COMMON["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logits(loaded, ids), logits(quantized, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("gguf_type", ROUND_TRIP_TYPES)
def test_pruned_llama_reads_back_bit_for_bit(gguf_type, tokenizer, tmp_path):
    model = prune_half(family("llama"))
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type=gguf_type, show_progress=False)
    assert summary.arch == "llama" and summary.block_types == {gguf_type: summary.block_types[gguf_type]}
    assert summary.block_bits == pytest.approx(TYPES[gguf_type].bits_per_weight)
    check_round_trip(model, tmp_path / "m.gguf", gguf_type)
    if TYPES[gguf_type].quantized:  # the weights did change: the round trip is not a trivial identity
        assert not torch.equal(dequantized_state_dict(model, gguf_type)["model.layers.0.mlp.up_proj.weight"],
                               model.model.layers[0].mlp.up_proj.weight)


@pytest.mark.parametrize("name,gguf_type,arch", [("qwen2", "q8_0", "qwen2"), ("qwen3", "q4_0", "qwen3"),
                                                  ("mistral", "q5_0", "llama")])
def test_other_llama_family_members_read_back(name, gguf_type, arch, tokenizer, tmp_path):
    model = prune_half(family(name))
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type=gguf_type, show_progress=False)
    assert summary.arch == arch
    check_round_trip(model, tmp_path / "m.gguf", gguf_type)


def test_file_metadata_follows_llama_cpp(tokenizer, tmp_path):
    """Norms F32, embedding at Q8_0 under a 4-bit type, tied output not duplicated, tokenizer complete."""
    model = family("llama")
    write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q4_0", show_progress=False)
    reader = GGUFReader(tmp_path / "m.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.3.ffn_down.weight"] == "Q4_0"
    assert ("output.weight" in types) != bool(model.config.tie_word_embeddings)
    field = reader.fields["tokenizer.ggml.tokens"]
    assert len(field.data) == COMMON["vocab_size"]
    assert bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"
    assert int(reader.fields["llama.attention.head_count_kv"].parts[-1][0]) == COMMON["num_key_value_heads"]


def test_tokenizer_read_from_the_file_encodes_like_the_original(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    write_gguf(family("llama"), tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q8_0", show_progress=False)
    loaded = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    text = "The quick brown fox jumps over 13 lazy dogs, twice."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_auto_types_follow_the_spectra_within_the_budget(tokenizer, tmp_path):
    model = family("llama")
    summary = write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="auto:5.0", show_progress=False)
    assert summary.block_bits <= 5.0 + 1e-9
    assert len(summary.block_types) > 1  # a real mix, not one type
    check_round_trip(model, tmp_path / "m.gguf", "auto:5.0")


def test_choose_types_gives_lower_alpha_the_wider_type_and_never_exceeds_the_budget():
    scores = [2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5]
    counts = [1000] * len(scores)
    for budget in (4.5, 5.0, 5.5, 6.0, 7.0, 8.5):
        types = choose_types(scores, counts, budget)
        bits = [TYPES[t].bits_per_weight for t in types]
        assert sum(b * c for b, c in zip(bits, counts)) <= budget * sum(counts) + 1e-9
        assert bits == sorted(bits, reverse=True)  # lower alpha, wider type
    assert set(choose_types(scores, counts, 8.5)) == {"q8_0"}
    assert set(choose_types(scores, counts, 4.5)) == {"q4_0"}
    with pytest.raises(ConfigError, match="auto"):
        parse_type("auto:9")


def test_zero_losing_types_are_refused_on_pruned_models_with_the_measured_rate(tokenizer, tmp_path):
    model = prune_half(family("llama"))
    with pytest.raises(ConfigError, match=r"q4_1 keeps only [0-9.]+ % of this model's pruned zeros"):
        write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q4_1", show_progress=False)
    assert not os.listdir(tmp_path)
    kept, zeros = zero_survival(model.model.layers[0].mlp.up_proj.weight.detach().numpy(), TYPES["q4_1"])
    assert zeros > 0 and kept / zeros < 0.05
    write_gguf(model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q4_1", force=True, show_progress=False)
    write_gguf(family("llama"), tmp_path / "dense.gguf", tokenizer=tokenizer, gguf_type="q5_1", show_progress=False)


@pytest.mark.parametrize("name", ["gpt2", "opt", "phi3", "mixtral"])
def test_other_families_are_refused_before_writing(name, tokenizer, tmp_path):
    with pytest.raises(ModelStructureError, match="GGUF export supports the Llama family"):
        write_gguf(build(name), tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q8_0", show_progress=False)
    assert not os.listdir(tmp_path)


def test_interrupted_write_leaves_the_old_file_and_no_temporary(tokenizer, tmp_path, monkeypatch):
    from optimum_alpha.gguf import writer

    target = tmp_path / "m.gguf"
    target.write_bytes(b"old")
    calls = {"n": 0}
    real = writer.quantize

    def interrupted(data, kind):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(data, kind)

    monkeypatch.setattr(writer, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_gguf(family("llama"), target, tokenizer=tokenizer, gguf_type="q8_0", overwrite=True,
                   show_progress=False)
    assert calls["n"] == 5 and os.listdir(tmp_path) == ["m.gguf"] and target.read_bytes() == b"old"


def test_bad_requests_are_one_line_before_any_work(tokenizer, tmp_path):
    from optimum_alpha.errors import CheckpointError

    model = family("llama")
    (tmp_path / "exists.gguf").write_bytes(b"x")
    cases = [({"gguf_type": "q3_k"}, ConfigError, "unknown gguf type"),
             ({"path": tmp_path / "m.bin"}, CheckpointError, "must end in .gguf"),
             ({"path": tmp_path / "exists.gguf"}, CheckpointError, "exists; pass overwrite=True"),
             ({"tokenizer": None}, CheckpointError, "needs the model's tokenizer")]
    for change, error, message in cases:
        options = {"path": tmp_path / "m.gguf", "tokenizer": tokenizer, "gguf_type": "q8_0", **change}
        with pytest.raises(error, match=message):
            write_gguf(model, options.pop("path"), show_progress=False, **options)
    assert sorted(os.listdir(tmp_path)) == ["exists.gguf"]


def width_pruned(tokenizer, allocation: str, kind: str = "llama"):
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    model = family(kind)
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False)
    config = AlphaPruningConfig(structure="width", sparsity=0.3, allocation=allocation, nsamples=4, seqlen=32,
                                calibration_dataset="c4")
    pruner.prune(config, show_progress=False)
    return pruner


def test_uniform_width_pruned_model_is_plain_llama_with_scalar_widths(tokenizer, tmp_path):
    pruner = width_pruned(tokenizer, "uniform")
    summary = write_gguf(pruner.model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q8_0",
                         show_progress=False)
    assert summary.arch == "llama" and not summary.per_layer_widths and not summary.fallbacks
    reader = GGUFReader(tmp_path / "m.gguf")
    ffn = pruner.model.model.layers[0].mlp.gate_proj.out_features
    assert ffn % 32  # so the file pads it: ffn_down's rows must split into blocks of 32
    assert list(reader.fields["llama.feed_forward_length"].parts[-1]) == [-(-ffn // 32) * 32]
    check_round_trip(pruner.model, tmp_path / "m.gguf", "q8_0")


def test_per_block_widths_are_written_as_deci_arrays(tokenizer, tmp_path):
    pruner = width_pruned(tokenizer, "alpha")
    widths = [(layer.self_attn.q_proj.out_features // 16, layer.self_attn.k_proj.out_features // 16,
               layer.mlp.gate_proj.out_features) for layer in pruner.model.model.layers]
    assert len(set(widths)) > 1
    summary = write_gguf(pruner.model, tmp_path / "m.gguf", tokenizer=tokenizer, gguf_type="q8_0",
                         show_progress=False)
    assert summary.arch == "deci" and summary.per_layer_widths and not summary.fallbacks
    widths = [(heads, kv, -(-ffn // 32) * 32) for heads, kv, ffn in widths]  # padded to whole q8_0 blocks
    reader = GGUFReader(tmp_path / "m.gguf")

    def array(key):  # a field alike in every block is one scalar (llama.cpp broadcasts it)
        field = reader.fields[key]
        values = [int(field.parts[i][0]) for i in field.data]
        return values * len(widths) if len(values) == 1 else values

    keys = ("attention.head_count", "attention.head_count_kv", "feed_forward_length")
    assert any(len(reader.fields[f"deci.{key}"].data) == len(widths) for key in keys)  # one value per layer
    assert array("deci.attention.head_count") == [w[0] for w in widths]
    assert array("deci.attention.head_count_kv") == [w[1] for w in widths]
    assert array("deci.feed_forward_length") == [w[2] for w in widths]
    tensors = {t.name: t for t in reader.tensors}
    for index, (_, _, ffn) in enumerate(widths):
        assert list(tensors[f"blk.{index}.ffn_up.weight"].shape) == [COMMON["hidden_size"], ffn]


def test_qwen3_with_per_block_widths_is_refused(tokenizer, tmp_path):
    pruner = width_pruned(tokenizer, "alpha", kind="qwen3")
    with pytest.raises(ModelStructureError, match="deci"):
        write_gguf(pruner.model, tmp_path / "m.gguf", tokenizer=tokenizer, show_progress=False)
    assert not os.listdir(tmp_path)


def test_cli_exports_a_saved_sparse_folder_and_a_plain_hf_folder(tokenizer, tmp_path, capsys):
    from optimum_alpha.checkpoint import save_pruned
    from optimum_alpha.commands.cli import main

    model = prune_half(family("llama"))
    save_pruned(model, tmp_path / "ours", tokenizer=tokenizer, format="sparse")
    family("llama").save_pretrained(tmp_path / "plain")  # (transformers gives a qwen2 folder a 321st token)
    tokenizer.save_pretrained(tmp_path / "plain")
    for folder, gguf_type in (("ours", "q8_0"), ("plain", "auto:6.0")):
        output = tmp_path / f"{folder}.gguf"
        assert main(["export", str(tmp_path / folder), "--format", "gguf", "--type", gguf_type,
                     "--output", str(output), "-q"]) == 0
        assert "wrote" in capsys.readouterr().out
        read_back(output)
    check_round_trip(model, tmp_path / "ours.gguf", "q8_0")
    width = width_pruned(tokenizer, "alpha")  # an alpha_width folder: blocks of different widths
    save_pruned(width.model, tmp_path / "width", tokenizer=tokenizer, format="dense")
    assert main(["export", str(tmp_path / "width"), "--output", str(tmp_path / "width.gguf"), "-q"]) == 0
    assert "arch deci, per-layer widths" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "ours"), "--type", "q3_k", "--output", str(tmp_path / "x.gguf")])
    assert "unknown gguf type" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.real_model
def test_smollm2_q8_0_reads_back_bit_for_bit(tmp_path):
    from optimum_alpha import AlphaPruner

    pruner = AlphaPruner.from_pretrained("smollm2-135m", show_progress=False)
    model = prune_half(pruner.model)
    write_gguf(model, tmp_path / "s.gguf", tokenizer=pruner.tokenizer, gguf_type="q8_0", show_progress=False)
    expected = dequantized_state_dict(model, "q8_0")
    loaded = read_back(tmp_path / "s.gguf")
    state = loaded.state_dict()
    assert all(torch.equal(state[name], weight) for name, weight in expected.items())
    ids = torch.arange(1, 33)[None, :]
    model.load_state_dict(expected, strict=False)
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), rtol=0, atol=1e-4)
    assert np.isclose((tmp_path / "s.gguf").stat().st_size / 2**20, 145, rtol=0.1)


def test_benchmark_script_prints_one_row_per_variant(tokenizer):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import gguf_export as bench

    variants = ["dense Q8_0", "dense auto:5.0", "width 30 % alpha+refit Q8_0"]
    text = bench.main(["--variants", *variants, "--nsamples", "2", "--seqlen", "32", "--eval-seqlen", "32",
                       "--max-windows", "2", "--skip-llama-cpp"], model_factory=lambda: (family("llama"), tokenizer))
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "variant" not in line]
    assert [cells[0].strip() for cells in rows] == variants
    assert [cells[2].strip() for cells in rows] == ["llama", "llama", "deci"]
    assert all(float(cells[6]) > 1 for cells in rows)  # the transformers perplexity of each file's weights


def test_save_pretrained_gguf_goes_through_the_writer_registry(tokenizer, tmp_path):
    from optimum_alpha import AlphaPruner
    from optimum_alpha.checkpoint.writers import writer_names
    from optimum_alpha.options import format_names

    assert "gguf" in writer_names() and "gguf" in format_names()
    model = prune_half(family("llama"))
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "out", format="gguf", gguf_type="q5_0")
    check_round_trip(model, folder / "model.gguf", "q5_0")
    metadata = __import__("json").loads((folder / "alpha_pruning.json").read_text())
    assert metadata["gguf"]["type"] == "q5_0" and metadata["gguf"]["block_types"] == {"q5_0": sum(
        p.numel() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)}
    assert "gguf_file=\"model.gguf\"" in (folder / "README.md").read_text()
    with pytest.raises(ConfigError, match="unknown gguf type"):
        pruner.save_pretrained(tmp_path / "bad", format="gguf", gguf_type="q2_k")
    from optimum_alpha.errors import CheckpointError

    with pytest.raises(CheckpointError, match="takes no options"):
        pruner.save_pretrained(tmp_path / "bad", format="dense", gguf_type="q8_0")
    assert not (tmp_path / "bad").exists()
