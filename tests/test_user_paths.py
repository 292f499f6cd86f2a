"""Issue 13, the user's paths: one test (or a few) per numbered item of the issue. Item 2, pruning inside
``from_pretrained``, is tests/test_prune_on_load.py. Commands run in-process on a tiny random Llama; the
checks that need a fresh interpreter (import time, loading without the plug-in) use subprocesses."""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.checkpoint import push_folder_to_hub, save_pruned
from optimum_alpha.checkpoint.model_card import build_model_card
from optimum_alpha.commands import prune as prune_cmd
from optimum_alpha.commands.cli import build_parser, main
from optimum_alpha.commands.common import load_kwargs
from optimum_alpha.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--nsamples", "2", "--seqlen", "32", "--calibration", "wikitext2"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny_folder(tiny_tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    make_tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """One CLI invocation in this process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in line, line
    return line


def no_load(monkeypatch) -> None:
    """Make any model load fail loudly: the check under test must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("optimum_alpha.pruner.AlphaPruner.from_pretrained", refuse)
    monkeypatch.setattr("optimum_alpha.models.load_model", refuse)


# ----------------------------------------------------------------- 1. examples that finish and say what they measure


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [line.split("#")[0] for line in joined.splitlines() if "alpha-prune" in line]


def test_readme_examples_state_small_calibration_and_window_counts():
    commands = readme_commands()
    assert any(" prune " in c for c in commands) and any(" eval " in c for c in commands)
    for command in commands:
        if " prune " in command:
            assert "--nsamples" in command, command
        if " eval " in command or "--eval " in command or command.rstrip().endswith("--eval"):
            assert "--max-windows" in command and "--eval-seqlen" in command, command
    python = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)[0]
    assert "nsamples=" in python and "max_windows=" in python


def test_eval_prints_the_window_length_and_count_with_the_number(tiny_folder, capsys):
    code, out, err = run(["eval", tiny_folder, "--eval-seqlen", "32", "--max-windows", "2"], capsys)
    assert code == 0, err
    assert "perplexity (wikitext2, 2 windows x 32 tokens)" in out


# ----------------------------------------------------------------------------------- 3. metadata tells the truth


def test_nm_run_reports_the_pattern_everywhere(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["prune", tiny_folder, "--nm", "2:8", "--method", "magnitude"], capsys)
    assert code == 0, err
    assert "Pruning to 75% (2:8 pattern, magnitude)" in err
    assert "total sparsity: 0.7500 (target 0.7500, structure 2:8)" in out
    folder = tmp_path / "outputs" / "tiny-llama-2of8-magnitude-75"
    assert folder.is_dir(), sorted(p.name for p in (tmp_path / "outputs").iterdir())
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["sparsity_structure"] == "2:8"
    metadata = json.loads((folder / "alpha_pruning.json").read_text())
    assert metadata["sparsity_structure"] == "2:8" and metadata["target_sparsity"] == pytest.approx(0.75)
    card = (folder / "README.md").read_text()
    assert "| sparsity structure | 2:8 |" in card and "| target sparsity | 0.7500 |" in card
    assert "eigenspectra" not in card and "2:8 pattern" in card


def test_sparsity_that_an_nm_pattern_overrides_is_an_error(tiny_folder, tmp_path, monkeypatch, capsys):
    no_load(monkeypatch)
    code, _, err = run(["prune", tiny_folder, "--sparsity", "0.7", "--nm", "2:4", "--output", tmp_path / "o"], capsys)
    one_line_error(code, err, "--sparsity 0.7 contradicts --nm 2:4", "sparsity 0.5", "mixed:4")
    assert not (tmp_path / "o").exists()


def test_uniform_card_does_not_describe_an_eigenspectrum_allocation(tiny_tokenizer, tmp_path):
    pruner = AlphaPruner.from_pretrained(make_tiny_model("llama"), tokenizer=tiny_tokenizer, show_progress=False)
    pruner.prune(AlphaPruningConfig(sparsity=0.5, method="magnitude", allocation="uniform"), show_progress=False)
    card = (pruner.save_pretrained(tmp_path / "u") / "README.md").read_text()
    assert "eigenspectra" not in card and "every block got the same sparsity" in card
    assert "| sparsity structure | unstructured |" in card


def test_card_evaluation_line_names_dataset_window_length_and_count():
    metadata = {"config": {"method": "wanda", "allocation": "alpha"},
                "perplexity": {"dense": 20.0, "pruned": 30.0, "dataset": "wikitext2", "seqlen": 512, "windows": 20}}
    card = str(build_model_card(metadata, fmt="sparse", chart_file=None))
    assert "| perplexity (wikitext2, 20 windows x 512 tokens) | dense 20.00 -> pruned 30.00 |" in card


def test_blocks_pinned_at_max_sparsity_are_warned_and_reported(tiny_tokenizer, tmp_path, caplog):
    pruner = AlphaPruner.from_pretrained(make_tiny_model("llama", layers=3), tokenizer=tiny_tokenizer,
                                         show_progress=False)
    config = AlphaPruningConfig(sparsity=0.6, method="magnitude", epsilon=0.5, max_sparsity=0.62)
    with caplog.at_level(logging.WARNING, logger="optimum_alpha"):
        _, report = pruner.prune(config, show_progress=False)
    assert report.pinned_blocks, [b.target_sparsity for b in report.blocks]
    assert any("pinned at the sparsity cap" in r.getMessage() for r in caplog.records)
    card = (pruner.save_pretrained(tmp_path / "p") / "README.md").read_text()
    assert "| blocks pinned at the sparsity cap |" in card


# ---------------------------------------------------------------------------- 4. dependency floors the code meets


def test_transformers_floor_is_a_version_with_the_loader_api():
    from transformers.quantizers.base import HfQuantizer

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = config["options"]["install_requires"]
    floor = re.search(r"^\s*transformers>=([0-9.]+)", requires, flags=re.M).group(1)
    assert tuple(int(x) for x in floor.split(".")) >= (5, 23)  # 5.22 has no get_load_operations
    assert hasattr(HfQuantizer, "get_load_operations") and hasattr(HfQuantizer, "serialized_names")
    assert os.access(ROOT / ".ci" / "lowest", os.X_OK)


# ------------------------------------------------------------------- 5. tokenizer follows the model's source options


def test_tokenizer_is_loaded_with_subfolder_and_from_a_path_string(tiny_folder, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_folder, repo / "checkpoints" / "final")
    pruner = AlphaPruner.from_pretrained(str(repo), subfolder="checkpoints/final", show_progress=False)
    assert pruner.tokenizer is not None and pruner.tokenizer("hello").input_ids
    by_path = AlphaPruner.from_pretrained(make_tiny_model("llama"), tokenizer=str(tiny_folder))
    assert by_path.tokenizer is not None and by_path.tokenizer("hello").input_ids


# ----------------------------------------------------------------------------- 6. pushing: checked first, retryable


def test_push_target_is_checked_before_loading(tiny_folder, tmp_path, monkeypatch, capsys):
    no_load(monkeypatch)
    code, _, err = run(["prune", tiny_folder, "--push-to-hub", "me/x", "--output", tmp_path / "o"], capsys)
    one_line_error(code, err, "HF_HUB_OFFLINE")
    assert not (tmp_path / "o").exists()


def test_failed_push_keeps_the_folder_and_prints_the_retry_command(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    out_dir = tmp_path / "o"
    code, _, err = run(["prune", tiny_folder, "--method", "magnitude", "--allocation", "uniform",
                        "--push-to-hub", "me/x", "--private", "--output", out_dir], capsys)
    line = one_line_error(code, err, "could not be reached", f"optimum-cli alpha-prune push {out_dir} me/x --private")
    assert (out_dir / "config.json").is_file(), line
    code, _, err = run(["push", out_dir, "me/x"], capsys)  # the retry command exists and fails the same clean way
    one_line_error(code, err, "could not be reached")


def test_pushed_card_names_the_repo(tiny_folder, tmp_path):
    folder = save_pruned(make_tiny_model("llama"), tmp_path / "s")
    assert 'from_pretrained("path/to/this/folder")' in (folder / "README.md").read_text()

    class Api:
        def create_repo(self, *args, **kwargs):
            return "https://huggingface.co/me/x"

        def upload_folder(self, **kwargs):
            self.card = (Path(kwargs["folder_path"]) / "README.md").read_text()

    api = Api()
    push_folder_to_hub(folder, "me/x", api=api)
    assert 'from_pretrained("me/x")' in api.card and "path/to/this/folder" not in api.card


# ------------------------------------------------------------------------------ 7. checks before slow work


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only torch")
def test_cuda_device_map_on_a_cpu_torch_is_one_line(tiny_folder, monkeypatch, capsys):
    no_load(monkeypatch)
    for command in (["prune", tiny_folder, "--output", "unused"], ["eval", tiny_folder], ["analyze", tiny_folder]):
        code, _, err = run([*command, "--device-map", "cuda"], capsys)
        one_line_error(code, err, "--device-map cuda", "no CUDA device")


@pytest.mark.parametrize("flags, fragment", [
    (["--seqlen", "100000"], "--seqlen 100000 exceeds the model's maximum positions (256)"),
    (["--eval", "--eval-seqlen", "100000"], "--eval-seqlen 100000 exceeds"),
    (["--eval", "--eval-dataset", "foo"], "'foo' is neither a shipped dataset"),
])
def test_options_are_checked_before_the_model_loads(tiny_folder, tmp_path, monkeypatch, capsys, flags, fragment):
    no_load(monkeypatch)
    code, _, err = run(["prune", tiny_folder, *flags, "--output", tmp_path / "o"], capsys)
    one_line_error(code, err, fragment)


def test_analysis_runs_only_when_the_allocation_uses_it(tiny_tokenizer, monkeypatch):
    calls = []
    real = __import__("optimum_alpha.state", fromlist=["analyze"]).analyze
    monkeypatch.setattr("optimum_alpha.state.analyze", lambda *a, **k: calls.append(1) or real(*a, **k))
    for config in (AlphaPruningConfig(sparsity=0.5, method="magnitude", allocation="uniform"),
                   AlphaPruningConfig(method="magnitude", nm="2:4"),
                   AlphaPruningConfig(sparsity=0.5, allocation="owl", nsamples=2, seqlen=32,
                                      calibration_dataset="wikitext2")):
        AlphaPruner.from_pretrained(make_tiny_model("llama"), tokenizer=tiny_tokenizer).prune(config,
                                                                                              show_progress=False)
    assert calls == []
    AlphaPruner.from_pretrained(make_tiny_model("llama")).prune(
        AlphaPruningConfig(sparsity=0.5, method="magnitude"), show_progress=False)
    assert calls == [1]


def test_nm_divisibility_fails_before_the_analysis(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr("optimum_alpha.state.analyze", lambda *a, **k: pytest.fail("analysis ran first"))
    pruner = AlphaPruner.from_pretrained(make_tiny_model("llama"), tokenizer=tiny_tokenizer)
    with pytest.raises(ConfigError, match="multiple of M"):
        pruner.prune(AlphaPruningConfig(sparsity=0.6, method="magnitude", nm="mixed:5"), show_progress=False)


# ----------------------------------------------------------------------------------------- 8. CLI conventions


def test_new_flags_reach_the_config_and_the_loader():
    args = build_parser().parse_args([
        "prune", "m", "--dtype", "bfloat16", "--trust-remote-code", "--revision", "v1", "--percdamp", "0.05",
        "--blocksize", "64", "--owl-threshold", "7", "--owl-lambda", "0.1", "--fix-finger", "strict",
        "--eval-dataset", "c4", "--eval-seqlen", "64", "--seqlen", "128", "-q",
    ])
    config = prune_cmd.resolve_config(args)
    assert (config.percdamp, config.blocksize, config.owl_threshold, config.owl_lambda) == (0.05, 64, 7.0, 0.1)
    assert config.fix_finger == "strict" and config.seqlen == 128
    assert (args.eval_dataset, args.eval_seqlen, args.quiet) == ("c4", 64, True)
    assert load_kwargs(args) == {"dtype": torch.bfloat16, "revision": "v1", "trust_remote_code": True}


def test_metric_does_not_swallow_the_model_and_eval_keeps_hidden_aliases(capsys):
    parser = build_parser()
    args = parser.parse_args(["analyze", "--metric", "alpha_hill", "tiny-llama", "--metric", "entropy,stable_rank"])
    assert args.model == "tiny-llama" and args.metric == [["alpha_hill"], ["entropy", "stable_rank"]]
    args = parser.parse_args(["eval", "m", "--dataset", "c4", "--seqlen", "64"])
    assert (args.eval_dataset, args.eval_seqlen) == ("c4", 64)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--help"])
    help_text = capsys.readouterr().out
    assert "--eval-dataset" in help_text and "--dataset" not in help_text.replace("--eval-dataset", "")


def test_dtype_flag_saves_a_bfloat16_folder(tiny_folder, tmp_path, capsys, monkeypatch):
    for variable, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                            ("TRANSFORMERS_VERBOSITY", "error")):
        monkeypatch.setenv(variable, value)  # what -q sets, undone after this in-process run
    out_dir = tmp_path / "bf16"
    code, out, err = run(["prune", tiny_folder, "--method", "magnitude", "--allocation", "uniform", "--dtype",
                          "bfloat16", "--output", out_dir, "-q"], capsys)
    assert code == 0, err
    assert json.loads((out_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert "[1/" not in err and "saved to:" in out  # -q: no stage headers, results still printed


# ---------------------------------------------------------------------------- 9. --help is instant (lazy imports)


def test_subcommand_help_is_fast_and_imports_no_torch():
    timings = {}
    for command in ("analyze", "prune", "eval", "push"):
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "optimum_alpha.commands.cli", command, "--help"],
                                capture_output=True, text=True, env=ENV, check=False)
        timings[command] = time.perf_counter() - start
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
    # Typically 0.15 s; a generous bound for a loaded CI machine (it took 3.4-4.4 s when torch was imported).
    assert max(timings.values()) < 3.0, timings
    probe = "import sys, optimum_alpha; from optimum_alpha.commands.cli import build_parser; build_parser(); " \
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, check=True)
    assert result.stdout.strip() == "[]"


def test_import_still_registers_the_loader_in_a_fresh_process(tmp_path):
    model = make_tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, ::2] = 0
    folder = save_pruned(model, tmp_path / "s")
    torch.save(model.state_dict(), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import torch, optimum_alpha
        from transformers import AutoModelForCausalLM
        loaded = AutoModelForCausalLM.from_pretrained({str(folder)!r}).state_dict()
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        print(all(torch.equal(loaded[k], v) for k, v in expected.items() if k in loaded))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, check=False)
    assert result.stdout.strip().endswith("True"), result.stderr[-2000:]


# ----------------------------------------------------------------- 10. loading without the plug-in names the fix


def test_loading_without_the_plugin_names_optimum_alpha(tmp_path):
    model = make_tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, ::2] = 0
    folder = save_pruned(model, tmp_path / "s")
    script = ("from transformers import AutoModelForCausalLM\n"
              f"AutoModelForCausalLM.from_pretrained({str(folder)!r})\n")
    env = {**ENV, "PYTHONPATH": ""}  # optimum_alpha is never imported here
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "INSTALL_optimum-alpha.then.import_optimum_alpha.before.from_pretrained" in output


# ------------------------------------------------------------------------ 11. squared norms say they are squared


def test_squared_norms_are_named_as_such_and_old_names_still_work():
    from optimum_alpha.esd import ESDReport, analyze, spectrum_metrics

    weight = torch.randn(16, 32, dtype=torch.float64)
    metrics, _ = spectrum_metrics(torch.linalg.eigvalsh(weight.T @ weight))
    assert metrics["frobenius_norm_sq"] == pytest.approx(float(weight.pow(2).sum()), rel=1e-9)
    assert metrics["spectral_norm_sq"] == pytest.approx(float(torch.linalg.matrix_norm(weight, 2) ** 2), rel=1e-9)
    assert AlphaPruningConfig(metric="frobenius_norm").metric == "frobenius_norm_sq"
    report = analyze(make_tiny_model("llama"), metrics=["spectral_norm"], show_progress=False)
    old = json.loads(report.to_json().replace("spectral_norm_sq", "spectral_norm"))  # an esd.json from 0.1
    assert ESDReport.from_dict(old).scores("spectral_norm")[0] == report.scores("spectral_norm_sq")[0]
