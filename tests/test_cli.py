"""Command-line tests: the real entry points (``optimum-cli alpha-prune``, ``optimum-alpha``) in subprocesses
on a tiny random Llama, plus fast in-process checks of the parser and its help texts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_tiny_model
from optimum_alpha.commands import analyze as analyze_cmd
from optimum_alpha.commands import prune as prune_cmd
from optimum_alpha.commands.cli import build_parser, main
from optimum_alpha.commands.common import format_table, model_slug

BIN = Path(sys.executable).parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TINY_PRUNE = ["--nsamples", "2", "--seqlen", "32", "--calibration", "wikitext2"]


def cli(*args: str, entry: str = "optimum-alpha", cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run an installed entry point of this environment and capture its output."""
    command = [str(BIN / "optimum-cli"), "alpha-prune"] if entry == "optimum-cli" else [str(BIN / entry)]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    # Progress headers may precede the error line, but the error itself is a single line.
    assert not any(line.startswith("error") for line in lines[:-1])
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def _number_after(text: str, marker: str) -> float:
    """The number printed right after ``marker`` in a command's output."""
    return float(text.split(marker, 1)[1].split()[0].rstrip(",:"))


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer, tmp_path_factory) -> Path:
    """A saved 2-block random Llama with the shared tiny BPE tokenizer: a MODEL folder for the commands."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pruned(tiny_model: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One full ``optimum-cli alpha-prune prune ... --eval`` run shared by the tests that inspect it."""
    output = tmp_path_factory.mktemp("pruned") / "tiny-alpha-wanda-50"
    result = cli(
        "prune", str(tiny_model), "--sparsity", "0.5", "--method", "wanda", "--allocation", "alpha",
        *TINY_PRUNE, "--eval", "--eval-seqlen", "32", "--max-windows", "2", "--output", str(output),
        entry="optimum-cli",
    )
    return output, result


# ------------------------------------------------------------------------------------- entry points


def test_optimum_cli_registers_alpha_prune():
    top = cli("--help", entry="optimum-cli")
    assert top.returncode == 0, top.stderr
    assert top.stdout.startswith("usage: optimum-cli alpha-prune")
    for command in ("analyze", "prune", "eval"):
        assert f"  {command}  " in top.stdout
    # Sub-command arguments reach the shared parser, which names the optimum-cli program.
    sub = cli("prune", "--help", entry="optimum-cli")
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.startswith("usage: optimum-cli alpha-prune prune")
    assert "--sparsity S" in sub.stdout and "(default: 0.5)" in sub.stdout


def test_register_module_imports_no_torch():
    """optimum imports every register module on each `optimum-cli` call: it must stay light."""
    code = (
        "import sys, optimum.commands.register.register_alpha_prune as r; "
        "assert r.REGISTER_COMMANDS[0].COMMAND.name == 'alpha-prune'; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_analyze_writes_report_plots_and_allocation(tiny_model, tmp_path):
    from optimum_alpha.esd import ESDReport

    output = tmp_path / "esd"
    result = cli("analyze", str(tiny_model), "--sparsity", "0.6", "--epsilon", "0.2", "--output", str(output))
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.strip().startswith("block"))
    assert "alpha_hill" in header and "stable_rank" in header and "sparsity" in header
    report = ESDReport.from_json(output / "esd.json")
    assert len(report.blocks) == 2 and len(report.matrices) == 14
    allocation = json.loads((output / "allocation.json").read_text())
    counts = [b.num_params for b in report.blocks]
    weighted = sum(s * c for s, c in zip(allocation["block_sparsities"], counts)) / sum(counts)
    assert weighted == pytest.approx(0.6)
    # ε = 0.2 bounds the spread of the two blocks' sparsities to [0.8, 1.2] times the target.
    assert max(allocation["block_sparsities"]) <= 0.6 * 1.2 / 0.8 + 1e-9
    pngs = sorted(p.name for p in output.glob("*.png"))
    assert "block_alpha_hill.png" in pngs and len([p for p in pngs if p.startswith("esd_")]) == 3
    assert all((output / p).read_bytes()[:8] == PNG_MAGIC for p in pngs)


def test_prune_pipeline_summary_and_files(pruned):
    output, result = pruned
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "perplexity before pruning" in out
    before_after = next(line for line in out.splitlines()
                        if line.startswith("perplexity (wikitext2, 2 windows x 32 tokens)"))
    assert "before" in before_after and "after" in before_after
    assert _number_after(out, "total sparsity:") == pytest.approx(0.5, abs=0.01)
    assert "peak memory" in out and "MiB" in out
    # The per-block table shows each block's alpha and allocated sparsity.
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    rows = [row for row in rows if len(row) == 4]
    assert [int(r[0]) for r in rows] == [0, 1]
    assert all(0.0 < float(r[2]) < 1.0 for r in rows)
    assert (output / "config.json").is_file()
    assert any(output.glob("*.safetensors"))
    # Stage headers go to stderr so stdout holds only results.
    assert "[1/" in result.stderr and "[1/" not in out


def test_eval_of_saved_folder_reproduces_pruned_perplexity(pruned):
    """Same protocol (seqlen 32, 2 windows) on the reloaded sparse checkpoint: same number as in memory."""
    output, result = pruned
    assert result.returncode == 0
    after = _number_after(result.stdout, ", after ")
    before = _number_after(result.stdout, "perplexity before pruning:")
    run = cli("eval", str(output), "--seqlen", "32", "--max-windows", "2")  # --seqlen: eval's old name
    assert run.returncode == 0, run.stderr[-3000:]
    reloaded = _number_after(run.stdout, f"of {output}:")
    assert reloaded == pytest.approx(after, rel=1e-4)
    assert reloaded != pytest.approx(before, rel=1e-4)


def test_prune_config_file_with_flag_override(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from optimum_alpha import AlphaPruningConfig

    config_path = tmp_path / "config.json"
    AlphaPruningConfig(sparsity=0.3, method="magnitude", allocation="uniform").to_json_file(config_path)
    output = tmp_path / "out"
    result = cli("prune", str(tiny_model), "--config", str(config_path), "--sparsity", "0.6",
                 "--format", "dense", "--max-shard-size", "100KB", "--output", str(output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(output.glob("model-*-of-*.safetensors"))) > 1  # --max-shard-size reaches save_pretrained
    assert "(uniform allocation, magnitude)" in result.stdout
    assert _number_after(result.stdout, "total sparsity:") == pytest.approx(0.6, abs=0.01)
    # The dense format is a plain checkpoint: stock transformers sees the zeros.
    model = AutoModelForCausalLM.from_pretrained(output)
    weights = [m.weight for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize(
    "entry, args, fragments",
    [
        ("optimum-alpha", ["prune", "{model}", "--sparsity", "1.5"], ["sparsity", "1.5"]),
        ("optimum-cli", ["eval", "./no/such/model"], ["does not exist", "smollm2-135m"]),
        ("optimum-cli", ["prune", "{model}", "--method", "lasso"], ["--method", "invalid choice", "wanda"]),
    ],
    ids=["sparsity", "model-path", "method"],
)
def test_bad_invocations_fail_with_one_line(tiny_model, tmp_path, entry, args, fragments):
    result = cli(*(a.format(model=tiny_model) for a in args), entry=entry, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not any(tmp_path.iterdir()), "a failed run must not write anything"


def test_existing_output_needs_overwrite(tiny_model, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    result = cli(
        "prune", str(tiny_model), "--method", "magnitude", "--output", str(output), entry="optimum-cli"
    )
    assert_one_line_error(result, "--overwrite", str(output))
    assert (output / "keep.txt").read_text() == "user data"


def test_calibration_file_too_short(tiny_model, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of calibration text.")
    result = cli("prune", str(tiny_model), "--calibration", str(short), "--nsamples", "4", "--seqlen", "32",
                 "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "nsamples", "4 x 32")


# ----------------------------------------------------------------------------------------- in-process


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_documents_its_default():
    for name, sub in _subparsers(build_parser()).items():
        formatter = sub._get_formatter()
        flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
        assert len(flags) >= 4
        for action in flags:
            text = formatter._expand_help(action)
            assert "(default: " in text, f"{name} {action.option_strings[0]} does not state its default"
            assert text.count("(default:") == 1, text


def test_analyze_command_reads_the_options_module():
    """The analyze command's metric list and ε default are the options module's (no hand-kept mirrors)."""
    from optimum_alpha.configuration import AlphaPruningConfig
    from optimum_alpha.esd import METRICS

    assert analyze_cmd.METRICS == METRICS
    assert analyze_cmd.DEFAULT_EPSILON == AlphaPruningConfig().epsilon


def test_flags_override_config_file(tmp_path):
    from optimum_alpha import AlphaPruningConfig

    path = tmp_path / "c.json"
    AlphaPruningConfig(sparsity=0.7, method="sparsegpt", epsilon=0.1, nsamples=8).to_json_file(path)
    args = build_parser().parse_args(["prune", "m", "--config", str(path), "--epsilon", "0.25"])
    config = prune_cmd.resolve_config(args)
    assert (config.sparsity, config.method, config.epsilon, config.nsamples) == (0.7, "sparsegpt", 0.25, 8)
    plain = prune_cmd.resolve_config(build_parser().parse_args(["prune", "m", "--nm", "2:4"]))
    assert plain.nm_pattern == (2, 4) and plain.sparsity == 0.5
    assert prune_cmd.default_output("org/My-Model", config) == Path("outputs/My-Model-alpha-sparsegpt-70")


def test_main_reports_config_errors_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sparsity": 0.5, "learning_rate": 1}))
    with pytest.raises(SystemExit) as exc:
        main(["prune", "m", "--config", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "learning_rate" in err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["eval", "m", "--max-windows", "0"], "argument --max-windows: must be at least 1"),
        (["prune", "m", "--nsamples", "many"], "argument --nsamples: expected a whole number"),
        (["analyze", "m", "--metric", "alpha"], "argument --metric: unknown metric 'alpha'"),
        (["compress", "m"], "invalid choice: 'compress'"),
    ],
)
def test_usage_errors_are_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and fragment in err, err


def test_helpers():
    assert model_slug("HuggingFaceTB/SmolLM2-135M") == "SmolLM2-135M"
    assert model_slug("/models/x y.gguf") == "x-y"
    table = format_table(["a", "score"], [[1, 0.5], [10, None]]).splitlines()
    assert table[0].split() == ["a", "score"]
    assert table[2].split() == ["1", "0.5000"] and table[3].split() == ["10", "-"]
    assert len({len(line) for line in table}) == 1


def test_ignore_flag_keeps_matching_weights_dense_and_says_so(tiny_model, tmp_path):
    out = tmp_path / "ignored"
    result = cli("prune", str(tiny_model), "--sparsity", "0.5", "--method", "magnitude", "--ignore",
                 "re:.*self_attn.*", "--ignore", "down_proj", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "kept dense on purpose: 10 weights" in result.stdout  # 4 attention + 1 down_proj per block, x2
    layers = json.loads((out / "alpha_pruning.json").read_text())["layers"]
    assert layers and not any("self_attn" in name or "down_proj" in name for name in layers)
