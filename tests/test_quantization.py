"""Prune, then quantise without losing a zero (issue 20): grids, GPTQ that keeps the mask, SparseGPT's joint
mode, bit budgets, the compressed-tensors folder that plain transformers loads, refusals and interruptions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from architectures import build
from conftest import make_tiny_model
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.errors import AlphaPruningError, CheckpointError, ConfigError
from optimum_alpha.pruning.sparsegpt import SparseGPTPruner
from optimum_alpha.quantization import QuantSpec, allocate_bits, recorded_grids, rtn
from optimum_alpha.quantization.bits import average_bits
from optimum_alpha.quantization.gptq import gptq, joint_sparsegpt
from optimum_alpha.quantization.spec import dequantize_integers, group_scales

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
TINY = dict(nsamples=4, seqlen=32, calibration_dataset="wikitext2", group_size=32)


def quantised_run(model, tokenizer, **overrides):
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False)
    config = AlphaPruningConfig(**{"sparsity": 0.5, "method": "wanda", "bits": 4, **TINY, **overrides})
    _, report = pruner.prune(config, show_progress=False)
    return pruner, report


# ------------------------------------------------------------------------------------------ one matrix
def correlated_layer(rows: int = 48, cols: int = 128, tokens: int = 2048, seed: int = 0):
    """Inputs with a strong low-rank correlation (as real activations have), a half-pruned weight, H."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(tokens, 12, generator=generator) @ torch.randn(12, cols, generator=generator)
    inputs += 0.1 * torch.randn(tokens, cols, generator=generator)
    weight = torch.randn(rows, cols, generator=generator)
    weight[torch.rand(rows, cols, generator=generator) < 0.5] = 0
    return inputs, weight, 2 * inputs.T @ inputs / tokens


def output_error(inputs, weight, approximation) -> float:
    return float(((inputs @ (weight - approximation).T) ** 2).sum())


@pytest.mark.parametrize("group_size", [32, None])
def test_gptq_reconstructs_a_correlated_layer_better_than_rtn_and_keeps_every_zero(group_size):
    inputs, weight, hessian = correlated_layer()
    spec = QuantSpec(4, group_size)
    mask = weight == 0
    rounded = rtn(weight, spec).weight()
    solved = gptq(weight, hessian, spec, mask)
    assert output_error(inputs, weight, solved.weight()) < 0.7 * output_error(inputs, weight, rounded)
    assert torch.equal(solved.weight()[mask], torch.zeros(int(mask.sum())))  # bitwise: +0.0 everywhere
    assert torch.equal(solved.codes[mask], torch.zeros(int(mask.sum()), dtype=torch.int8))
    assert int(solved.codes.min()) >= -8 and int(solved.codes.max()) <= 7  # a 4-bit grid


@pytest.mark.parametrize("seed", range(3))
def test_activation_order_beats_input_order_on_outlier_inputs_with_consecutive_groups(seed):
    inputs, weight, _ = correlated_layer(seed=seed)
    inputs = inputs * torch.exp(2 * torch.randn(inputs.shape[1], generator=torch.Generator().manual_seed(seed)))
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]  # a few inputs dominate, as in real activations
    spec, mask = QuantSpec(4, 32), weight == 0
    ordered = gptq(weight, hessian, spec, mask, act_order=True)
    in_order = gptq(weight, hessian, spec, mask, act_order=False)
    assert output_error(inputs, weight, ordered.weight()) < 0.6 * output_error(inputs, weight, in_order.weight())
    assert torch.equal(ordered.weight()[mask], torch.zeros(int(mask.sum())))
    # Static scales of runs of 32 consecutive inputs, from the masked weights: no reordering index to store.
    assert torch.equal(ordered.scales, group_scales(weight.masked_fill(mask, 0.0), spec, weight.dtype))
    assert torch.equal(ordered.weight(), dequantize_integers(ordered.codes, ordered.scales, spec))


def test_gptq_order_and_dampening_reach_the_solver_and_the_report(tiny_tokenizer):
    model = make_tiny_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = {}
    for fields in (dict(), dict(act_order=False, quant_damp=0.05), dict(method="sparsegpt"),
                   dict(method="sparsegpt", joint_quantisation=True)):
        model.load_state_dict(state)
        pruner, report = quantised_run(model, tiny_tokenizer, **fields)
        q = report.quantization
        weight = pruner.model.model.layers[0].mlp.down_proj.weight.clone()
        assert float((weight == 0).float().mean()) >= 0.5  # every variant keeps its pruned zeros
        runs[tuple(fields.items())] = ((q["act_order"], q["dampening"]), weight)
    (default, w_default), (changed, w_changed), (sparsegpt, w_then), (joint, w_joint) = runs.values()
    assert default == sparsegpt == (True, 0.1) and changed == (False, 0.05)
    assert joint == (False, 0.01)  # the joint sweep keeps SparseGPT's column order and percdamp
    assert not torch.equal(w_default, w_changed) and not torch.equal(w_then, w_joint)


def test_joint_sparsegpt_w4_keeps_sparsegpt_mask():
    inputs, _, _ = correlated_layer()
    dense = torch.randn(48, 256, generator=torch.Generator().manual_seed(1))
    inputs = torch.cat([inputs, inputs.roll(1, dims=1)], dim=1)
    pruner = SparseGPTPruner("layer", blocksize=128)
    pruner.add_batch(inputs)
    float_result = pruner.prune(dense, 0.5)
    joint = joint_sparsegpt(dense, pruner.hessian, QuantSpec(4, 32), 0.5, None, blocksize=128)
    weight = joint.weight()
    assert int(joint.pruned.sum()) == dense.numel() // 2 and torch.all(weight[joint.pruned] == 0)
    # The first block's mask is chosen before any rounding error exists: exactly SparseGPT's.
    first = slice(0, 128)
    assert torch.all(weight[:, first][float_result[:, first] == 0] == 0)
    # Every block prunes exactly SparseGPT's count; quantisation may round a few kept weights to 0 too.
    assert int((weight == 0).sum()) >= int((float_result == 0).sum()) == dense.numel() // 2
    # Quantised jointly, the reconstruction stays close to the float solve (not a prune-then-round).
    rounded_after = rtn(float_result, QuantSpec(4, 32)).weight()
    assert output_error(inputs, dense, weight) < output_error(inputs, dense, rounded_after)


# ------------------------------------------------------------------------------------------ bit budget
@pytest.mark.parametrize("seed", range(5))
def test_bit_budget_is_respected_and_the_next_upgrade_would_break_it(seed):
    generator = torch.Generator().manual_seed(seed)
    counts = [int(c) for c in torch.randint(100, 5000, (24,), generator=generator)]
    scores = [float(s) for s in torch.rand(24, generator=generator) * 6 + 2]
    for budget in (4.0, 4.25, 4.5, 6.0, 8.0):
        widths = allocate_bits(scores, counts, budget, (4, 8), "alpha")
        assert average_bits(widths, counts) <= budget + 1e-12
        room = budget * sum(counts) - sum(w * c for w, c in zip(widths, counts))
        assert all(4 * c > room + 1e-6 for c, w in zip(counts, widths) if w == 4)  # nothing more fits
        eight = [s for s, w in zip(scores, widths) if w == 8]
        four = [s for s, w in zip(scores, widths) if w == 4]
        if budget == 4.0:
            assert not eight
        elif budget == 8.0:
            assert not four


def test_alpha_bits_go_to_the_lowest_alpha_blocks():
    widths = allocate_bits([3.0, 6.0, 2.5, 5.0, 4.0, 7.0, 3.5, 6.5], [100] * 8, 5.0, (4, 8), "alpha")
    assert widths == [8, 4, 8, 4, 4, 4, 4, 4]
    uniform = allocate_bits(None, [100] * 8, 4.0, (4, 8), "uniform")
    assert uniform == [4] * 8
    spread = allocate_bits(None, [100] * 8, 5.0, (4, 8), "uniform")
    assert sum(w == 8 for w in spread) == 2 and average_bits(spread, [100] * 8) == 5.0


def test_bits_per_matrix_in_the_report_meet_the_budget(tiny_tokenizer):
    pruner, report = quantised_run(make_tiny_model("llama", layers=3), tiny_tokenizer, bits=5.0,
                                   granularity="matrix", bit_allocation="alpha")
    quantization = report.quantization
    assert quantization["average_bits"] <= 5.0
    assert set(quantization["bits"].values()) == {4, 8}
    grids = recorded_grids(pruner.model)
    assert {name: grid.spec.bits for name, grid in grids.items()} == quantization["bits"]
    low_alpha = min(pruner.esd_report.matrices, key=lambda m: m.metrics["alpha_hill"]).name
    assert quantization["bits"][low_alpha] == 8
    # scales are float32 here, one per 32 weights: 4 + 32/32 bits at W4, 8 + 1 at W8
    expected = sum((b + 1.0) * m.numel for b, m in
                   ((quantization["bits"][m.name], m) for blk in pruner.block_weights() for m in blk.matrices))
    assert quantization["bits_per_weight_with_scales"] == pytest.approx(expected / quantization["quantized_params"])


# ------------------------------------------------------------------------------------- zeros kept, models
@pytest.mark.parametrize("family", ["llama", "qwen3", "mixtral"])
@pytest.mark.parametrize("method,quant", [("wanda", "gptq"), ("alps", "gptq"), ("magnitude", "rtn")])
def test_pruned_zeros_stay_bitwise_zero_after_quantisation(family, method, quant, tiny_tokenizer, monkeypatch):
    from optimum_alpha.pruning import get_pruner_class

    cls = get_pruner_class(method)
    original, masks = cls.prune, {}

    def prune(self, weight, sparsity, nm=None):  # the mask the pruner chose, before any rounding
        result = original(self, weight, sparsity, nm)
        masks[self.name] = result == 0
        return result

    monkeypatch.setattr(cls, "prune", prune)
    pruner, report = quantised_run(build(family), tiny_tokenizer, weight_quant_method=quant, method=method,
                                   alps_max_iter=20)
    grids = recorded_grids(pruner.model)
    matrices = [m for block in pruner.block_weights() for m in block.matrices]
    assert matrices and set(grids) == {m.name for m in matrices} == set(masks)
    for matrix in matrices:
        weight, mask = matrix.read(), masks[matrix.name]
        scales = grids[matrix.name].scales.repeat_interleave(32, dim=1)
        codes = torch.round(weight / scales)
        assert codes.min() >= -8 and codes.max() <= 7 and torch.equal(codes * scales, weight)  # on its grid
        assert mask.sum() > 0 and torch.all(weight[mask] == 0), matrix.name
        assert not torch.signbit(weight[mask]).any()  # +0.0, bit for bit
    assert report.total_sparsity >= 0.5 - 1e-3


def test_sparsity_zero_quantises_without_pruning(tiny_tokenizer):
    model = make_tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    pruner, report = quantised_run(model, tiny_tokenizer, sparsity=0.0, weight_quant_method="rtn")
    for matrix in (m for block in pruner.block_weights() for m in block.matrices):
        original = before[matrix.name + ".weight"]
        assert torch.equal(matrix.read(), rtn(original, QuantSpec(4, 32)).weight())
    # nothing pruned: the only zeros are the small weights that round to 0 (about 12 % of Gaussian weights)
    assert report.blocks[0].target_sparsity == 0.0 and 0.0 < report.total_sparsity < 0.2


# ---------------------------------------------------------------------------- the compressed-tensors folder
FRESH_LOAD = textwrap.dedent('''
    import sys, torch

    class NoOptimumAlpha:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "optimum_alpha":
                raise ImportError("this process must not import optimum_alpha")

    sys.meta_path.insert(0, NoOptimumAlpha())
    from transformers import AutoModelForCausalLM

    folder, ids_file, out_file = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(torch.load(ids_file)).logits
    weights = {name: module.weight.detach().clone() for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear)}
    torch.save({"logits": logits, "weights": weights}, out_file)
    assert not any(name.startswith("optimum_alpha") for name in sys.modules)
''')


def load_in_fresh_process(folder: Path, ids: torch.Tensor, tmp_path: Path) -> dict:
    torch.save(ids, tmp_path / "ids.pt")
    result = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(folder), str(tmp_path / "ids.pt"),
                             str(tmp_path / "out.pt")], capture_output=True, text=True, env=ENV, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


@pytest.mark.parametrize("family,overrides", [
    ("llama", dict(method="sparsegpt", bits=4.5, granularity="matrix")),
    ("qwen3", dict(method="wanda", weight_quant_method="gptq")),
])
def test_fresh_process_without_optimum_alpha_reproduces_the_logits(family, overrides, tiny_tokenizer, tmp_path):
    pruner, report = quantised_run(build(family), tiny_tokenizer, **overrides)
    folder = pruner.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pruner.model(ids).logits
    loaded = load_in_fresh_process(folder, ids, tmp_path)
    assert torch.equal(loaded["logits"], expected)
    for name, grid in recorded_grids(pruner.model).items():
        ours = dict(pruner.model.named_modules())[name].weight
        assert torch.equal(loaded["weights"][name], ours), name  # zeros included, bit for bit
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    widths = sorted({g["weights"]["num_bits"] for g in config["config_groups"].values()})
    assert widths == sorted(set(report.quantization["bits"].values()))
    assert "lm_head" in config["ignore"]
    metadata = json.loads((folder / "alpha_pruning.json").read_text())
    assert metadata["quantization"]["average_bits"] == report.quantization["average_bits"] <= overrides.get("bits", 4)
    assert "compressed-tensors" in (folder / "README.md").read_text()


def test_uniform_width_pruned_model_quantises_into_a_plain_folder(tiny_tokenizer, tmp_path):
    pruner, report = quantised_run(build("llama"), tiny_tokenizer, structure="width", sparsity=0.25,
                                   allocation="uniform", weight_quant_method="rtn", group_size=None)
    folder = pruner.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    assert "alpha_block_widths" not in json.loads((folder / "config.json").read_text())
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = pruner.model(ids).logits
    assert torch.equal(load_in_fresh_process(folder, ids, tmp_path)["logits"], expected)


def test_quantised_on_load_model_saves_a_compressed_tensors_folder(tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    dense = tmp_path / "dense"
    make_tiny_model("llama").save_pretrained(dense)
    tiny_tokenizer.save_pretrained(dense)
    config = AlphaPruningConfig(sparsity=0.5, method="magnitude", bits=4, weight_quant_method="rtn", group_size=32)
    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=config)
    model.save_pretrained(tmp_path / "ct")  # quantised on load: compressed-tensors without being told
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
    assert torch.equal(load_in_fresh_process(tmp_path / "ct", ids, tmp_path)["logits"], expected)


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("config,fmt,fragment", [
    (dict(), "compressed-tensors", "add bits"),
    (dict(bits=4), "dense", "Use --format compressed-tensors"),
    (dict(bits=4), "sparse", "Use --format compressed-tensors"),
    (dict(bits=4, nm="2:4"), "compressed-tensors", "cannot be kept by compressed-tensors"),
    (dict(bits=4, nm="mixed:8"), "compressed-tensors", "cannot be kept by compressed-tensors"),
    (dict(bits=4, structure="width", sparsity=0.3), "compressed-tensors", "allocation='uniform'"),
])
def test_refused_combinations_fail_in_one_line_before_loading(config, fmt, fragment, tmp_path):
    from optimum_alpha.commands.cli import main

    flags = {"bits": "--bits", "nm": "--nm", "structure": "--structure", "sparsity": "--sparsity"}
    argv = ["prune", str(tmp_path / "no-such-model"), "--format", fmt, "--output", str(tmp_path / "out")]
    for key, value in config.items():
        argv += [flags[key], str(value)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2  # the model path does not exist: it was never loaded


def test_refused_combinations_name_the_fix():
    from optimum_alpha.checkpoint.writers import get_writer

    cases = [(dict(), "compressed-tensors", "add bits"), (dict(bits=4), "dense", "compressed-tensors"),
             (dict(bits=4), "sparse", "compressed-tensors"), (dict(bits=4, nm="2:4"), "compressed-tensors", "drop nm"),
             (dict(bits=4, structure="width", sparsity=0.3), "compressed-tensors", "allocation='uniform'")]
    for fields, fmt, fragment in cases:
        with pytest.raises(AlphaPruningError) as info:
            get_writer(fmt).check_config(AlphaPruningConfig(**fields))
        assert fragment in str(info.value) and "\n" not in str(info.value)


def test_fused_experts_are_refused_before_pruning(tiny_tokenizer, tmp_path):
    model = build("mixtral")
    before = {n: p.clone() for n, p in model.named_parameters()}
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    with pytest.raises(ConfigError, match="compressed-tensors cannot pack") as info:
        pruner.quantize(tmp_path / "out", format="compressed-tensors", bits=4, **TINY)
    assert "ignore" in str(info.value) and "\n" not in str(info.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not (tmp_path / "out").exists()
    # With the experts kept float, the rest quantises and the folder loads.
    pruner.quantize(tmp_path / "out", format="compressed-tensors", bits=4, ignore=["re:.*experts.*"], **TINY)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["format"] \
        == "pack-quantized"


def test_group_size_that_does_not_divide_is_refused_before_block_0(tiny_tokenizer):
    model = make_tiny_model("llama")  # inputs of 64 and 128: 32 divides both
    before = {n: p.clone() for n, p in model.named_parameters()}
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    with pytest.raises(ConfigError, match="group_size=48 does not divide the 64 inputs") as info:
        pruner.prune(AlphaPruningConfig(bits=4, **{**TINY, "group_size": 48}), show_progress=False)
    assert "e.g. 32" in str(info.value)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_quantised_model_is_not_saved_as_floats_and_a_float_one_not_as_integers(tiny_tokenizer, tmp_path):
    pruner, _ = quantised_run(make_tiny_model("llama"), tiny_tokenizer, weight_quant_method="rtn")
    with pytest.raises(CheckpointError, match="save with format='compressed-tensors'"):
        pruner.save_pretrained(tmp_path / "a", format="sparse")
    float_pruner = AlphaPruner.from_pretrained(make_tiny_model("llama"), show_progress=False)
    with pytest.raises(CheckpointError, match="holds float ones"):
        float_pruner.save_pretrained(tmp_path / "b", format="compressed-tensors")
    # A weight changed after quantisation is caught before the folder claims a width it does not have.
    matrix = pruner.block_weights()[0].matrices[0]
    matrix.write(matrix.read() * 1.001)
    with pytest.raises(CheckpointError, match="no longer on its 4-bit grid"):
        pruner.save_pretrained(tmp_path / "c", format="compressed-tensors")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("fields,fragment", [
    (dict(bits=3), "outside bit_choices"), (dict(bits=4, bit_choices=(4, 9)), "from 2 to 8"),
    (dict(bits=4, weight_quant_method="awq"), "Unknown quant_method"), (dict(bits=4, group_size=-1), "group_size"),
    (dict(bits=4, bit_allocation="owl"), "Unknown bit_allocation"),
    (dict(bits=4, reconstruct="block"), "off their integer grid"), (dict(bits=4, quant_damp=0), "quant_damp"),
    (dict(bits=4, method="wanda", joint_quantisation=True), "joint_quantisation needs method='sparsegpt'"),
    (dict(method="sparsegpt", joint_quantisation=True), "joint_quantisation needs"),
    (dict(bits=4, method="sparsegpt", weight_quant_method="rtn", joint_quantisation=True), "joint_quantisation"),
])
def test_bad_quantisation_options(fields, fragment):
    assert AlphaPruningConfig(bits=4, group_size=0).group_size is None  # 0: the CLI's "one scale per row"
    with pytest.raises(AlphaPruningError, match=fragment):
        AlphaPruningConfig(**fields)


# --------------------------------------------------------------------------------------- interruption
@pytest.mark.parametrize("k", [0, 1, 2])
def test_interrupted_prune_and_quantise_leaves_blocks_before_k_done_and_the_rest_untouched(k, tiny_tokenizer,
                                                                                          monkeypatch):
    from optimum_alpha.quantization import layer

    reference, _ = quantised_run(make_tiny_model("llama", layers=3), tiny_tokenizer)
    expected = {m.name: m.read().clone() for b in reference.block_weights() for m in b.matrices}
    model = make_tiny_model("llama", layers=3)
    dense = {n: p.clone() for n, p in model.named_parameters()}
    original = layer.QuantisingPruner.prune
    seen = []

    def prune(self, weight, sparsity, nm=None):
        seen.append(self.name)
        if self.name.startswith(f"model.layers.{k}.") and sum(s.startswith(f"model.layers.{k}.") for s in seen) == 3:
            raise KeyboardInterrupt("Ctrl-C")
        return original(self, weight, sparsity, nm)

    monkeypatch.setattr(layer.QuantisingPruner, "prune", prune)
    with pytest.raises(KeyboardInterrupt):
        quantised_run(model, tiny_tokenizer)
    grids = recorded_grids(model)
    assert {name.split(".")[2] for name in grids} == {str(i) for i in range(k)}
    for name, value in expected.items():
        current = dict(model.named_modules())[name].weight
        if int(name.split(".")[2]) < k:
            assert torch.equal(current, value), name
        else:
            assert torch.equal(current, dense[name + ".weight"]), name


# ------------------------------------------------------------------------------------------ real model
@pytest.mark.real_model
def test_smollm2_wanda_w4_folder_loads_in_plain_transformers(tmp_path):
    from optimum_alpha.models import load_model

    model, tokenizer = load_model("smollm2-135m")
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, show_progress=False)
    config = AlphaPruningConfig(sparsity=0.5, method="wanda", bits=4, group_size=64, nsamples=2, seqlen=64,
                                allocation="uniform", weight_quant_method="rtn")  # GPTQ: see the benchmark
    _, report = pruner.prune(config, show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "ct", format="compressed-tensors")
    ids = tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = pruner.model(ids).logits
    loaded = load_in_fresh_process(folder, ids, tmp_path)
    assert torch.equal(loaded["logits"], expected)
    assert report.quantization["bits_per_weight_with_scales"] == pytest.approx(4.5)  # float32 scales, groups of 64
