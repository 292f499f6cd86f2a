"""Catalogue of bad inputs: each one raises the documented error type, with a message that names the problem
and its fix, and nothing is written (the in-memory model keeps its weights bit for bit, no folder appears).

The guarantees are listed in docs/guarantees.md; every row there has a case here or in the files it names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import TINY_POSITIONS, make_tiny_model
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.checkpoint import target as target_module
from optimum_alpha.commands.cli import main
from optimum_alpha.data import load_texts
from optimum_alpha.errors import (
    AlphaPruningError,
    CalibrationDataError,
    CheckpointError,
    ConfigError,
    ModelStructureError,
)
from optimum_alpha.evaluate import perplexity
from optimum_alpha.model_utils import KNOWN_BLOCK_PATHS

FAST = {"nsamples": 2, "seqlen": 16}  # two windows of 16 tokens: enough to exercise every calibration path


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> Path:
    """A few C4 documents (a few thousand tokens): tokenizing them is instant, unlike the full sample."""
    path = tmp_path_factory.mktemp("calibration") / "calib.txt"
    path.write_text("\n\n".join(load_texts("c4")[:6]))
    return path


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN equals itself, -0.0 differs from 0.0)."""
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    changed = [name for name, tensor in before.items() if not same_bits(tensor, after[name])]
    assert not changed, f"a failed call modified {changed[:3]}"


def fragments_in(error: BaseException, *fragments: str) -> None:
    message = str(error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


# ------------------------------------------------------------------------------------------ configuration
# Through AlphaPruner.quantize (prune + save): the config is rejected before any weight or file is touched.

CONFIG_CASES = [
    ({"sparsity": 1.0}, ["sparsity must be in [0, 1)", "got 1.0", "e.g. 0.7"]),
    ({"sparsity": -0.01}, ["sparsity must be in [0, 1)", "got -0.01"]),
    ({"sparsity": float("nan")}, ["sparsity must be a finite number", "nan"]),
    ({"epsilon": -0.1}, ["epsilon must be in [0, 1)", "got -0.1", "paper default 0.3"]),
    ({"epsilon": 1.0}, ["epsilon must be in [0, 1)", "1 ± ε must stay positive"]),
    ({"method": "obs"}, ["Unknown method 'obs'", "alps, magnitude, sparsegpt, wanda"]),
    ({"allocation": "global"}, ["Unknown allocation 'global'", "alpha, atp, dlp, owl, uniform"]),
    ({"metric": "alpha"}, ["Unknown metric 'alpha'", "alpha_hill"]),
    ({"nm": "4:4"}, ["'4:4' needs 0 < N < M", "e.g. '2:4'"]),
    ({"nm": "6:4"}, ["'6:4' needs 0 < N < M"]),
    ({"nm": "0:4"}, ["'0:4' needs 0 < N < M"]),
]


@pytest.mark.parametrize("kwargs, fragments", CONFIG_CASES, ids=[str(c[0]) for c in CONFIG_CASES])
def test_invalid_config_raises_before_anything_is_written(kwargs, fragments, tmp_path):
    model = make_tiny_model("llama")
    pruner = AlphaPruner.from_pretrained(model, run_analysis=False)
    before = snapshot(model)
    with pytest.raises(ConfigError) as info:
        pruner.quantize(tmp_path / "out", **{"method": "magnitude", **kwargs})
    fragments_in(info.value, *fragments)
    assert_unchanged(model, before)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("intermediate, nm, layer, columns", [
    (128, "2:5", "model.layers.0.self_attn.q_proj", 64),  # no layer fits
    (96, "16:64", "model.layers.0.mlp.down_proj", 96),  # only the MLP's down projection does not fit
    (96, "mixed:64", "model.layers.0.mlp.down_proj", 96),
])
def test_nm_group_that_does_not_divide_an_input_dimension(intermediate, nm, layer, columns, tmp_path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=intermediate, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64))
    pruner = AlphaPruner.from_pretrained(model, run_analysis=False)
    before = snapshot(model)
    with pytest.raises(ConfigError) as info:
        pruner.quantize(tmp_path / "out", method="magnitude", allocation="uniform", nm=nm)
    fragments_in(info.value, "multiple of M", f"{layer} has {columns}", "choose an M that divides it")
    assert_unchanged(model, before)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ model structure


class Stack(nn.Module):
    """Blocks of two different classes: no attribute path matches and no ModuleList is homogeneous."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = nn.ModuleList([nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8))])


def test_model_without_blocks_names_every_path_tried():
    with pytest.raises(ModelStructureError) as info:
        AlphaPruner.from_pretrained(Stack(), show_progress=False)
    fragments_in(info.value, "No transformer blocks found in Stack", *KNOWN_BLOCK_PATHS, "AutoModelForCausalLM")


class Fused(nn.Module):
    """Stands in for a quantized/fused projection: computes like a Linear but is not one."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.packed = nn.Parameter(linear.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.packed.T


def model_with_linearless_block(block: int) -> nn.Module:
    model = make_tiny_model("llama", layers=3)
    layer = model.model.layers[block]
    for parent in (layer.self_attn, layer.mlp):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Fused(child))
    return model


def test_block_without_linear_layers_is_named_by_analysis():
    with pytest.raises(ModelStructureError) as info:
        AlphaPruner.from_pretrained(model_with_linearless_block(1), run_analysis=True, show_progress=False)
    fragments_in(info.value, "Block 1 (LlamaDecoderLayer)", "no nn.Linear or Conv1D", "already quantized or fused")


def test_block_without_linear_layers_stops_pruning_before_block_0_is_touched(tmp_path):
    model = model_with_linearless_block(2)
    pruner = AlphaPruner.from_pretrained(model, run_analysis=False)
    before = snapshot(model)
    with pytest.raises(ModelStructureError, match="Block 2"):
        pruner.prune(AlphaPruningConfig(method="magnitude", allocation="uniform"), show_progress=False)
    assert_unchanged(model, before)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("analysis", [True, False], ids=["analysis", "no-analysis"])
def test_non_finite_weight_is_reported_by_name_and_nothing_is_pruned(bad, analysis):
    model = make_tiny_model("llama", layers=3)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight[3, 5] = bad
    before = snapshot(model)
    with pytest.raises(ModelStructureError) as info:
        pruner = AlphaPruner.from_pretrained(model, run_analysis=analysis, show_progress=False)
        pruner.prune(AlphaPruningConfig(method="magnitude", allocation="uniform"), show_progress=False)
    fragments_in(info.value, "model.layers.2.mlp.down_proj")
    if not analysis:  # the pipeline's own check, which runs before block 0 is pruned
        fragments_in(info.value, "1 NaN/Inf", "Reload a healthy checkpoint")
    assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------ calibration


def calibration_case(tmp_path: Path, case: str):
    if case == "missing":
        return tmp_path / "no-such-file.jsonl", ["no-such-file.jsonl", "neither a shipped dataset", "c4"]
    if case == "empty":
        path = tmp_path / "empty.txt"
        path.write_text(" \n\n \t\n")
        return path, ["contains no text", "give a file with real text rows"]
    if case == "rows-without-text":
        path = tmp_path / "rows.jsonl"
        path.write_text('{"content": "hello"}\n')
        return path, ["row 1 of", "rows.jsonl", "has no 'text' field"]
    path = tmp_path / "short.txt"
    path.write_text("A calibration text of a dozen words or so, far too short.")
    return path, ["tokens but nsamples x seqlen = 4 x 64 = 256 are needed", "lower nsamples or seqlen"]


@pytest.mark.parametrize("case", ["missing", "empty", "rows-without-text", "short"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bad_calibration_source_fails_before_any_block(case, method, tiny_tokenizer, tmp_path):
    model = make_tiny_model("opt")
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, run_analysis=False)
    source, fragments = calibration_case(tmp_path, case)
    files = sorted(tmp_path.iterdir())
    before = snapshot(model)
    with pytest.raises(CalibrationDataError) as info:
        pruner.quantize(tmp_path / "out", method=method, allocation="uniform", calibration_dataset=source,
                        nsamples=4, seqlen=64)
    fragments_in(info.value, *fragments)
    assert_unchanged(model, before)
    assert sorted(tmp_path.iterdir()) == files


@pytest.mark.parametrize("config", [{"method": "wanda"}, {"method": "magnitude", "allocation": "owl"}])
def test_calibration_without_a_tokenizer(config, tmp_path):
    model = make_tiny_model("llama")
    pruner = AlphaPruner.from_pretrained(model, run_analysis=False)
    before = snapshot(model)
    with pytest.raises(CalibrationDataError) as info:
        pruner.quantize(tmp_path / "out", **config)
    fragments_in(info.value, "calibration text", "tokenizer", "pass tokenizer= to AlphaPruner.from_pretrained")
    assert_unchanged(model, before)
    assert not any(tmp_path.iterdir())


def test_seqlen_above_the_model_positions(tiny_tokenizer, calibration_file, tmp_path):
    model = make_tiny_model("gpt2")
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, run_analysis=False)
    before = snapshot(model)
    too_long = TINY_POSITIONS + 1
    with pytest.raises(ConfigError) as info:
        pruner.quantize(tmp_path / "out", method="wanda", allocation="uniform",
                        calibration_dataset=calibration_file, nsamples=1, seqlen=too_long)
    fragments_in(info.value, f"seqlen {too_long} exceeds", f"({TINY_POSITIONS})", f"use seqlen <= {TINY_POSITIONS}")
    with pytest.raises(ConfigError, match=f"use seqlen <= {TINY_POSITIONS}"):
        perplexity(model, tiny_tokenizer, seqlen=too_long, show_progress=False)
    assert_unchanged(model, before)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ output folder


@pytest.fixture
def pruned() -> AlphaPruner:
    pruner = AlphaPruner.from_pretrained(make_tiny_model("llama"), run_analysis=False)
    pruner.prune(AlphaPruningConfig(method="magnitude", allocation="uniform", sparsity=0.5), show_progress=False)
    return pruner


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_existing_output_folder_without_overwrite(pruned, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("user data")
    with pytest.raises(CheckpointError) as info:
        pruned.save_pretrained(target)
    fragments_in(info.value, str(target), "already exists", "overwrite=True", "choose another folder")
    assert tree(tmp_path) == {"out/notes.txt": b"user data"}


def test_quantize_refuses_the_folder_before_pruning(tmp_path):
    model = make_tiny_model("llama")
    pruner = AlphaPruner.from_pretrained(model, run_analysis=False)
    before = snapshot(model)
    (tmp_path / "notes.txt").write_text("user data")
    with pytest.raises(CheckpointError, match="already exists and is not empty; pass overwrite=True"):
        pruner.quantize(tmp_path, method="magnitude", allocation="uniform")
    assert_unchanged(model, before)
    assert pruner.last_report is None
    assert tree(tmp_path) == {"notes.txt": b"user data"}


def test_output_path_that_is_a_file(pruned, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"\x00\x01")
    for overwrite in (False, True):
        with pytest.raises(CheckpointError) as info:
            pruned.save_pretrained(target, overwrite=overwrite)
        fragments_in(info.value, str(target), "is a file", "pass a folder path")
    assert tree(tmp_path) == {"model.bin": b"\x00\x01"}


def test_unwritable_output_folder_simulated(pruned, tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(target_module.os, "mkdir", denied)
    with pytest.raises(CheckpointError) as info:
        pruned.save_pretrained(tmp_path / "out")
    fragments_in(info.value, "cannot write next to", "Permission denied", "choose a writable folder")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root bypasses permission bits, so chmod cannot deny a write (simulated case above)")
def test_unwritable_output_folder_real(pruned, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="choose a writable folder"):
            pruned.save_pretrained(parent / "out")
        assert not any(parent.iterdir())
    finally:
        parent.chmod(0o700)


# ------------------------------------------------------------------------------------------ loading


def test_gguf_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "models" / "tiny.Q4_0.gguf"
    with pytest.raises(CheckpointError) as info:
        AlphaPruner.from_pretrained(str(missing))
    fragments_in(info.value, str(missing), "does not exist", "check the path")
    with pytest.raises(CheckpointError) as info:
        AlphaPruner.from_pretrained(str(tmp_path), file_name="tiny.Q4_0.gguf")
    fragments_in(info.value, "tiny.Q4_0.gguf does not exist in", str(tmp_path), "check file_name=")
    with pytest.raises(CheckpointError) as info:
        AlphaPruner.from_pretrained(str(tmp_path / "no" / "model"))
    fragments_in(info.value, "does not exist", "pass an existing folder, a .gguf file, a hub id")
    assert not any(tmp_path.iterdir())


def test_push_before_save(pruned):
    with pytest.raises(CheckpointError, match="call save_pretrained.*before push_to_hub"):
        pruned.push_to_hub("user/tiny")


# ------------------------------------------------------------------------------------------ evaluation


def test_evaluation_without_a_tokenizer():
    with pytest.raises(CalibrationDataError) as info:
        perplexity(make_tiny_model("gpt2"), None, show_progress=False)
    fragments_in(info.value, "needs a tokenizer", "pass tokenizer=")


def test_cli_eval_of_a_model_without_tokenizer_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    make_tiny_model("llama").save_pretrained(folder)
    files = tree(tmp_path)
    output = tmp_path / "pruned"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["prune", str(folder), "--method", "magnitude", "--allocation", "uniform", "--eval",
              "--output", str(output)])
    assert exc.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "needs a tokenizer" in last and "pass tokenizer=" in last
    assert tree(tmp_path) == files and not output.exists()


def test_every_catalogued_error_is_a_value_error():
    for error in (ConfigError, ModelStructureError, CalibrationDataError, CheckpointError):
        assert issubclass(error, AlphaPruningError) and issubclass(error, ValueError)
