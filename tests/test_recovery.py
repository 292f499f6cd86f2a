"""Recovery after pruning (issue 22): zeros kept bitwise through full fine-tuning and LoRA merges (unstructured,
2:4, fused MoE experts), width-pruned shapes kept, the loss falls, a resumed run equals an uninterrupted one,
KD of a model with itself is zero, every bad input fails in one line before training."""

from __future__ import annotations

import copy
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from architectures import build
from conftest import make_tiny_model
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.checkpoint import load_pruned
from optimum_alpha.data import sample_calibration
from optimum_alpha.errors import CalibrationDataError, ConfigError, ModelStructureError
from optimum_alpha.matrices import find_routers, model_weights
from optimum_alpha.model_utils import find_blocks
from optimum_alpha.recovery import RecoveryConfig, RecoveryInterrupted, recover, recover_model
from optimum_alpha.recovery.data import recovery_windows
from optimum_alpha.recovery.losses import hidden_mse, kd_loss
from optimum_alpha.recovery.masks import SparsityMasks
from optimum_alpha.recovery.trainer import RecoveryTrainer, build_trainer

FAST = dict(seqlen=32, evaluate=False, learning_rate=1e-2, warmup_steps=0, lr_schedule="constant")


def pruned(model: torch.nn.Module, tokenizer, **options) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(teacher = the dense model, student = a pruned copy, the pruning record)."""
    teacher = copy.deepcopy(model)
    pruner = AlphaPruner(model, tokenizer)
    pruner.prune(AlphaPruningConfig(method="magnitude", allocation="uniform", **options), show_progress=False)
    return teacher, pruner.model, pruner.metadata()


def prunable_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter holding prunable matrices (expert parameters are 3-D), cloned."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = {}
    for block in model_weights(model)[1]:
        for matrix in block.matrices:
            param = getattr(matrix.module, matrix.param_name)
            params[names[id(param)]] = param.detach().clone()
    return params


def assert_zeros_kept(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Same zero set, every zero +0.0 bit for bit, and the kept weights did train."""
    after = dict(model.named_parameters())
    moved = 0
    for name, old in before.items():
        new = after[name].detach()
        assert torch.equal(new == 0, old == 0), name
        assert (new[old == 0].view(torch.int32) == 0).all(), name  # +0.0 exactly
        moved += int((new != old).sum())
    assert moved > 0  # training changed the kept weights: the test would see a mask that failed


def nm_kept(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    groups = (weight != 0).reshape(weight.shape[0], -1, m).sum(-1)
    return bool((groups <= n).all())


CASES = {
    "unstructured": ("llama", dict(sparsity=0.5)),
    "2:4": ("llama", dict(nm="2:4")),
    "moe": ("mixtral", dict(sparsity=0.5)),
}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("case", list(CASES))
def test_zeros_bitwise_unchanged(case, method, tiny_tokenizer):
    family, options = CASES[case]
    teacher, student, record = pruned(build(family), tiny_tokenizer, **options)
    before = prunable_params(student)
    routers = {n: p.detach().clone() for n, p in student.named_parameters() if ".gate.weight" in n}
    extra = dict(lora_experts=True) if method == "lora" and case == "moe" else {}
    model, report = recover_model(student, tiny_tokenizer, RecoveryConfig(steps=3, method=method, **extra, **FAST),
                                  teacher=teacher, record=record, show_progress=False)
    assert_zeros_kept(before, model)
    assert report.sparsity_after == report.sparsity_before > 0.45
    assert report.steps == 3 and report.tokens == 3 * 32
    if case == "2:4":
        assert all(nm_kept(model.get_submodule(name.rsplit(".", 1)[0]).weight) for name in before)
    if case == "moe":
        assert routers and all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in routers.items())
        assert any(p.dim() == 3 for p in before.values())
    if method == "lora":
        assert not any("lora" in name for name, _ in model.named_parameters())  # merged, peft gone


def test_routers_are_frozen_but_train_on_request(tiny_tokenizer):
    teacher, student, record = pruned(build("mixtral"), tiny_tokenizer, sparsity=0.5)
    block = find_blocks(student)[1][0]
    router = block.get_submodule(sorted(find_routers(block))[0]).weight
    kept = router.detach().clone()
    recover_model(student, tiny_tokenizer, RecoveryConfig(steps=2, train_routers=True, objective="lm", **FAST),
                  record=record, show_progress=False)
    assert not torch.equal(kept, router.detach())


def test_width_pruned_shapes_unchanged(tiny_tokenizer):
    model = make_tiny_model("llama", layers=2)
    teacher = copy.deepcopy(model)
    pruner = AlphaPruner(model, tiny_tokenizer)
    pruner.prune(AlphaPruningConfig(structure="width", sparsity=0.3, allocation="uniform", nsamples=4, seqlen=32),
                 show_progress=False)
    shapes = {n: p.shape for n, p in pruner.model.named_parameters()}
    weights = {n: p.detach().clone() for n, p in pruner.model.named_parameters()}
    assert sum(p.numel() for p in pruner.model.parameters()) < sum(p.numel() for p in teacher.parameters())
    model, report = pruner.recover(RecoveryConfig(steps=2, **FAST), teacher=teacher, show_progress=False)
    assert report.width_pruned
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    assert any(not torch.equal(weights[n], p) for n, p in model.named_parameters())
    assert pruner.metadata()["recovery"]["steps"] == 2


def test_loss_falls_on_a_fixed_batch(tiny_tokenizer, tmp_path):
    text = tmp_path / "one.txt"
    text.write_text("The quick brown fox jumps over the lazy dog near the river bank today. " * 3)
    teacher, student, record = pruned(make_tiny_model("llama"), tiny_tokenizer, sparsity=0.5)
    count = recovery_windows(tiny_tokenizer, str(text), 32).windows.shape[0]
    assert count > 1  # a batch of every window: each step sees the same batch
    config = RecoveryConfig(steps=15, objective="lm", dataset=str(text), batch_size=count, **FAST)
    _, report = recover_model(student, tiny_tokenizer, config, record=record, show_progress=False)
    losses = [loss for _, loss in report.loss_curve]
    assert len(losses) == 15 and losses[-1] < 0.5 * losses[0]


class SigintAt(TrainerCallback):
    """Sends this process a Ctrl-C at a step, as a user would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_checkpoint_resumes_the_same_run(tiny_tokenizer, tmp_path):
    teacher, student, record = pruned(make_tiny_model("llama"), tiny_tokenizer, sparsity=0.5)
    base = dict(steps=6, save_steps=100, **{**FAST, "learning_rate": 1e-3, "lr_schedule": "cosine"})
    straight, _ = recover_model(copy.deepcopy(student), tiny_tokenizer,
                                RecoveryConfig(output_dir=str(tmp_path / "a"), **base), teacher=teacher,
                                record=record, show_progress=False)
    with pytest.raises(RecoveryInterrupted) as stop:
        recover_model(copy.deepcopy(student), tiny_tokenizer, RecoveryConfig(output_dir=str(tmp_path / "b"), **base),
                      teacher=teacher, record=record, show_progress=False, callbacks=[SigintAt(2)])
    assert stop.value.step == 3 and stop.value.checkpoint.endswith("checkpoint-3")  # the step it was in, finished
    resumed, report = recover_model(copy.deepcopy(student), tiny_tokenizer,
                                    RecoveryConfig(output_dir=str(tmp_path / "b"), resume=True, **base),
                                    teacher=teacher, record=record, show_progress=False)
    assert report.steps == 6
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(dict(straight.named_parameters())["model.layers.0.mlp.up_proj.weight"],
                           dict(student.named_parameters())["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_of_a_model_with_itself_is_zero(tiny_tokenizer, temperature):
    model = make_tiny_model("llama")
    ids = torch.randint(0, 320, (2, 16))
    config = RecoveryConfig(steps=1, temperature=temperature, **FAST)
    trainer, _, _ = build_trainer(model, copy.deepcopy(model), [], config, "unused", SparsityMasks(), False)
    assert isinstance(trainer, RecoveryTrainer)
    assert trainer.compute_loss(model, {"input_ids": ids}).item() == 0.0
    other = make_tiny_model("llama", seed=1)
    assert trainer.compute_loss(other, {"input_ids": ids}).item() > 0  # not a constant zero
    logits = torch.randn(3, 5, 7)
    assert kd_loss(logits, logits.clone(), temperature).item() == 0.0


def test_mix_and_hidden_state_terms(tiny_tokenizer):
    model, other = make_tiny_model("llama"), make_tiny_model("llama", seed=1)
    ids = torch.randint(0, 320, (2, 16))

    def loss(**options):
        config = RecoveryConfig(steps=1, **FAST, **options)
        trainer, _, _ = build_trainer(other, model, [], config, "unused", SparsityMasks(), False)
        return trainer.compute_loss(other, {"input_ids": ids}).item()

    kd, lm = loss(objective="kd"), loss(objective="lm")
    assert loss(objective="mix", kd_weight=0.25) == pytest.approx(0.25 * kd + 0.75 * lm, rel=1e-5)
    assert loss(objective="kd", hidden_mse_weight=2.0) > kd
    outputs = model(ids, output_hidden_states=True).hidden_states
    assert hidden_mse(outputs, [h.clone() for h in outputs]).item() == 0.0


def test_recovery_data_leaves_out_the_calibration_documents(tiny_tokenizer):
    sample = sample_calibration(tiny_tokenizer, "c4", 8, 64, seed=3)
    calibration = {"seqlen": 64, "seed": 3, **sample.describe()}
    data = recovery_windows(tiny_tokenizer, "c4", 64, calibration=calibration)
    assert data.excluded_documents >= 8 and data.documents + data.excluded_documents == 200
    stream = data.windows.flatten().tolist()
    text = " " + " ".join(map(str, stream)) + " "
    for window in sample.ids:
        assert " " + " ".join(map(str, window[:24].tolist())) + " " not in text
    whole = recovery_windows(tiny_tokenizer, "c4", 64)
    assert whole.excluded_documents == 0 and whole.notices  # no record: says so


def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(RecoveryTrainer, "train", refuse)


def test_bad_inputs_fail_in_one_line_before_training(tiny_tokenizer, monkeypatch, tmp_path):
    no_training(monkeypatch)
    teacher, student, record = pruned(make_tiny_model("llama"), tiny_tokenizer, sparsity=0.5)
    cases = []
    with pytest.raises(ConfigError) as err:
        RecoveryConfig(steps=0)
    cases.append((err, "steps"))
    with pytest.raises(ConfigError) as err:
        RecoveryConfig(method="full", lora_targets=["q_proj"])
    cases.append((err, "method='lora'"))
    other_vocab = make_tiny_model("opt")
    other_vocab.resize_token_embeddings(400)
    with pytest.raises(ConfigError) as err:
        recover_model(student, tiny_tokenizer, RecoveryConfig(**FAST), teacher=other_vocab, record=record)
    cases.append((err, "vocabulary"))
    with pytest.raises(ConfigError) as err:
        recover_model(student, tiny_tokenizer, RecoveryConfig(method="lora", lora_targets=["qkv_fused"], **FAST),
                      teacher=teacher, record=record)
    cases.append((err, "qkv_fused"))
    with pytest.raises(ModelStructureError) as err:
        recover_model(copy.deepcopy(teacher), tiny_tokenizer, RecoveryConfig(**FAST), teacher=teacher)
    cases.append((err, "not pruned"))
    with pytest.raises(ConfigError) as err:
        recover_model(student, tiny_tokenizer, RecoveryConfig(**FAST), record=record)
    cases.append((err, "teacher"))
    with pytest.raises(ConfigError) as err:
        recover_model(student, tiny_tokenizer, RecoveryConfig(resume=True, output_dir=str(tmp_path / "none"), **FAST),
                      teacher=teacher, record=record)
    cases.append((err, "no checkpoint"))
    with pytest.raises(CalibrationDataError) as err:
        recover_model(student, tiny_tokenizer, RecoveryConfig(dataset=str(tmp_path / "missing.jsonl"), **FAST),
                      teacher=teacher, record=record)
    cases.append((err, "missing.jsonl"))
    with pytest.raises(CalibrationDataError) as err:  # offline: a Hub id that cannot load
        recover_model(student, tiny_tokenizer, RecoveryConfig(dataset="nobody/no-such-dataset", **FAST),
                      teacher=teacher, record=record)
    cases.append((err, "nobody/no-such-dataset"))
    for err, words in cases:
        assert words in str(err.value) and "\n" not in str(err.value)


def test_folder_round_trip_records_the_recovery(tiny_tokenizer, tmp_path):
    teacher, student, record = pruned(make_tiny_model("llama"), tiny_tokenizer, nm="2:4")
    from optimum_alpha.checkpoint import save_pruned

    save_pruned(student, tmp_path / "pruned", tokenizer=tiny_tokenizer, metadata=record)
    before = prunable_params(load_pruned(tmp_path / "pruned"))
    model, report = recover(tmp_path / "pruned", teacher=teacher,
                            config=RecoveryConfig(steps=2, **{**FAST, "evaluate": True, "eval_seqlen": 32,
                                                              "eval_windows": 2}),
                            output=tmp_path / "out", show_progress=False)
    saved = json.loads((tmp_path / "out" / "alpha_pruning.json").read_text())
    assert saved["format"] == "sparse" and saved["sparsity_structure"] == "2:4"
    assert saved["recovery"]["steps"] == 2 and saved["recovery"]["tokens"] == 64
    assert len(saved["recovery"]["loss_curve"]) == 2 and saved["recovery"]["perplexity"]["after"] > 0
    assert saved["achieved_sparsity"] == pytest.approx(0.5)
    assert "| recovery | kd objective, full fine-tuning, 2 steps, 64 tokens" in (tmp_path / "out" / "README.md").read_text()
    assert_zeros_kept(before, load_pruned(tmp_path / "out"))
    assert not (tmp_path / "out.recovery").exists()  # the completed run's checkpoints are gone


def test_cli_recover_fails_in_one_line(tiny_tokenizer, tmp_path, capsys):
    from optimum_alpha.checkpoint import save_pruned
    from optimum_alpha.commands.cli import main

    dense = make_tiny_model("llama")
    save_pruned(dense, tmp_path / "dense", tokenizer=tiny_tokenizer, format="dense")
    capsys.readouterr()
    for argv, words in (
        (["recover", str(tmp_path / "dense"), "--steps", "0", "--output", str(tmp_path / "o")], "at least 1"),
        (["recover", str(tmp_path / "dense"), "--objective", "lm", "--steps", "1", "--no-eval",
          "--output", str(tmp_path / "o")], "not pruned"),
    ):
        with pytest.raises(SystemExit) as code:
            main(argv)
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code.value.code == 2 and len(errors) == 1 and words in errors[0], errors
    assert not (tmp_path / "o").exists()


@pytest.mark.real_model
def test_smollm2_recovers_a_few_steps_with_zeros_kept():
    pytest.importorskip("gguf")
    pruner = AlphaPruner.from_pretrained("smollm2-135m", show_progress=False)
    pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude", allocation="uniform"), show_progress=False)
    before = prunable_params(pruner.model)
    model, report = pruner.recover(RecoveryConfig(steps=2, seqlen=128, evaluate=False), show_progress=False)
    assert_zeros_kept(before, model)  # the teacher was loaded again from "smollm2-135m"
    assert report.tokens == 256 and all(0 < loss < 10 for _, loss in report.loss_curve)
    assert pruner.metadata()["recovery"]["data"]["source"].startswith("c4 (shipped")


def test_recovery_benchmark_runs_on_tiny_folders(tiny_tokenizer, tmp_path):
    from optimum_alpha.checkpoint import save_pruned

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks import recovery as bench

    teacher, student, record = pruned(make_tiny_model("llama"), tiny_tokenizer, sparsity=0.5)
    teacher.save_pretrained(tmp_path / "dense")
    tiny_tokenizer.save_pretrained(tmp_path / "dense")
    save_pruned(student, tmp_path / "pruned", tokenizer=tiny_tokenizer, metadata=record)
    text = bench.main(["--teacher", str(tmp_path / "dense"), "--pruned", f"tiny={tmp_path / 'pruned'}",
                       "--variants", "kd-full", "lm-lora", "--steps", "2", "--lr", "0.002", "--seqlen", "32",
                       "--eval-seqlen", "32",
                       "--eval-windows", "1", "--curve-every", "1", "--jsonl", str(tmp_path / "rows.jsonl"), "--quiet"])
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["kd-full", "lm-lora"] and all(r["tokens"] == 64 for r in rows)
    assert all(r["lr"] == 0.002 for r in rows)  # --lr overrides both methods' defaults
    assert rows[0]["sparsity_after"] == rows[0]["sparsity_before"] > 0.45
    assert [s for s, _ in rows[0]["curve"]] == [0, 1, 2] and len(rows[1]["curve"]) == 2
    assert "| tiny | kd-full | 0.002 | 64 |" in text and "perplexity against training tokens" in text


def test_width_folder_with_per_block_widths_round_trips(tiny_tokenizer, tmp_path):
    model = make_tiny_model("llama", layers=3)
    teacher = copy.deepcopy(model)
    pruner = AlphaPruner(model, tiny_tokenizer)
    pruner.prune(AlphaPruningConfig(structure="width", sparsity=0.3, allocation="alpha", nsamples=4, seqlen=32),
                 show_progress=False)
    pruner.save_pretrained(tmp_path / "width", format="dense")
    widths = json.loads((tmp_path / "width" / "config.json").read_text()).get("alpha_block_widths")
    assert widths and len({json.dumps(w) for w in widths}) > 1  # blocks of different widths
    shapes = {n: p.shape for n, p in load_pruned(tmp_path / "width").named_parameters()}
    recover(tmp_path / "width", teacher=teacher, config=RecoveryConfig(steps=1, **FAST), output=tmp_path / "out",
            show_progress=False)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("alpha_block_widths") == widths
    assert {n: p.shape for n, p in load_pruned(tmp_path / "out").named_parameters()} == shapes


def test_recovery_options_are_the_config_fields_and_the_recover_flags():
    import argparse
    from dataclasses import fields

    from optimum_alpha import options
    from optimum_alpha.commands import recover as recover_cmd
    from optimum_alpha.commands.cli import build_parser

    assert {f.name for f in fields(RecoveryConfig)} == set(options.RECOVERY_BY_NAME)
    defaults = RecoveryConfig()
    assert all(getattr(defaults, o.name) == o.default for o in options.RECOVERY_OPTIONS)
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["recover"]
    flags = {a.dest: a.option_strings for a in sub._actions}
    assert all(o.cli_flag in flags[o.name] for o in options.RECOVERY_OPTIONS)
    args = parser.parse_args(["recover", "f", "--output", "o", "--lr", "0.001", "--grad-accum", "4", "--no-eval",
                              "--method", "lora", "--lora-targets", "q_proj,v_proj", "--resume"])
    config = recover_cmd.config_from_args(args)
    assert (config.learning_rate, config.gradient_accumulation, config.evaluate, config.lora_targets,
            config.resume, config.steps) == (0.001, 4, False, ["q_proj", "v_proj"], True, 200)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "recovery.md").read_text()
    assert options.markdown_table(options.RECOVERY_OPTIONS) in docs, "python -m optimum_alpha.options recovery"


def test_recovery_refuses_a_quantised_model_and_quantising_after_recovery_keeps_the_zeros(tiny_tokenizer):
    """Recovery trains floats: after quantisation it would undo the integer grid, so it is refused in one line
    naming the order that works (prune, recover, then quantise with sparsity=0), which this test then runs."""
    model = make_tiny_model("llama")
    teacher = copy.deepcopy(model)
    pruner = AlphaPruner(model, tiny_tokenizer)
    pruner.prune(AlphaPruningConfig(method="magnitude", allocation="uniform", sparsity=0.5, bits=4, group_size=32,
                                    weight_quant_method="rtn"), show_progress=False)
    with pytest.raises(ConfigError, match=r"quantised \(4-bit\).*sparsity=0, bits=") as err:
        pruner.recover(RecoveryConfig(steps=1, **FAST), teacher=teacher, show_progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="quantised"):  # the record alone says so (a folder's alpha_pruning.json)
        _, student, record = pruned(make_tiny_model("llama"), tiny_tokenizer, sparsity=0.5)
        record = {**record, "quantization": {"bits": {"model.layers.0.self_attn.q_proj": 4}}}
        recover_model(student, tiny_tokenizer, RecoveryConfig(steps=1, **FAST), teacher=teacher, record=record)

    teacher, student, record = pruned(make_tiny_model("llama"), tiny_tokenizer, sparsity=0.5)
    recover_model(student, tiny_tokenizer, RecoveryConfig(steps=2, **FAST), teacher=teacher, record=record,
                  show_progress=False)
    zeros = {name: p.detach() == 0 for name, p in prunable_params(student).items()}
    quantiser = AlphaPruner(student, tiny_tokenizer)
    quantiser.prune(AlphaPruningConfig(sparsity=0.0, bits=4, group_size=32, nsamples=2, seqlen=32),
                    show_progress=False)
    after = prunable_params(quantiser.model)
    assert all(torch.equal(after[name][mask], torch.zeros_like(after[name][mask])) for name, mask in zeros.items())
    assert sum(int(mask.sum()) for mask in zeros.values()) > 0
