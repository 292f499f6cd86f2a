"""Issue 27 (reliability, round two): the report after an interrupted ε search, width prune or a prune stopped
before block 0; dense-folder verification; finite checks before width pruning; routers as prunable matrices;
one-line errors for typed fields, calibration files, output folders and corrupt shards; width + N:M; the Hub
push time-out. docs/guarantees.md names each test next to its promise."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_model
from test_guarantees import run_cli
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.errors import CalibrationDataError, CheckpointError, ConfigError, ModelStructureError

TESTS = Path(__file__).parent
REPO = TESTS.parent


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


# --- items 1 and 5: the report after an interruption is true (a real SIGINT in a real process) -----------

# Each scenario sends the process a real SIGINT at one deterministic point of a prune and prints what a
# caller then sees: the report, and whether the model still has its weights from before the prune.
INTERRUPT_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    import torch
    from transformers import AutoTokenizer
    from conftest import make_tiny_model
    import optimum_alpha.epsilon_search as search_module
    import optimum_alpha.state as state_module
    import optimum_alpha.unstructured as unstructured_module
    from optimum_alpha import AlphaPruner, AlphaPruningConfig

    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    AUTO = dict(epsilon="auto", epsilon_grid=(0.1, 0.5), heldout=2, nsamples=2, seqlen=32, sparsity=0.5)

    def interrupt_on_call(module, name, when):
        original, calls = getattr(module, name), []

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == when:
                os.kill(os.getpid(), signal.SIGINT)  # delivered at once: KeyboardInterrupt from here
            return original(*args, **kwargs)

        setattr(module, name, wrapper)
        return lambda: setattr(module, name, original)

    SCENARIOS = {{
        # ε search: during the second trial's held-out evaluation, and inside the second trial's block 1
        "search-heldout": (dict(AUTO, method="magnitude"), (search_module, "window_perplexity", 2), False),
        "search-trial": (dict(AUTO, method="magnitude"), (unstructured_module, "prune_block", 5), False),
        # Wanda before block 0: during the allocation, after an earlier complete run of the same pruner
        "wanda-allocation": (dict(sparsity=0.5, nsamples=2, seqlen=32), (unstructured_module, "compute_targets", 1),
                             True),
        # width then unstructured: before the second stage's first block (its ESD analysis)
        "width-second-stage": (dict(structure="width", sparsity=0.2, unstructured_sparsity=0.3, nsamples=2,
                                    seqlen=32), (state_module, "analyze", 2), False),
    }}
    for name in sys.argv[2:]:
        config, (module, function, when), earlier_run = SCENARIOS[name]
        pruner = AlphaPruner.from_pretrained(make_tiny_model("llama", layers=3), tokenizer=tokenizer,
                                             show_progress=False)
        if earlier_run:
            pruner.prune(AlphaPruningConfig(**config), show_progress=False)
        before = {{k: v.clone() for k, v in pruner.model.state_dict().items()}}
        undo = interrupt_on_call(module, function, when)
        try:
            pruner.prune(AlphaPruningConfig(**config), show_progress=False)
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        undo()
        report = pruner.last_report
        after = pruner.model.state_dict()
        print(json.dumps({{
            "scenario": name, "interrupted": interrupted,
            "unchanged": before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before),
            "report": None if report is None else {{
                "completed": report.completed, "blocks": [b.index for b in report.blocks],
                "layers": len(report.layers), "structured": len(report.structured),
                "search": report.epsilon_search}},
        }}), flush=True)
    """
).format(tests=str(TESTS))


@pytest.fixture(scope="module")
def interrupted_runs(tiny_tokenizer, tmp_path_factory) -> dict[str, dict]:
    """One child process runs every scenario (one start-up of torch and transformers)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(folder)
    scenarios = ["search-heldout", "search-trial", "wanda-allocation", "width-second-stage"]
    done = subprocess.run([sys.executable, "-c", INTERRUPT_CHILD, str(folder), *scenarios], capture_output=True,
                          text=True, env=child_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {row["scenario"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert sorted(runs) == sorted(scenarios) and all(run["interrupted"] for run in runs.values())
    return runs


@pytest.mark.parametrize("scenario", ["search-heldout", "search-trial"])
def test_an_interrupted_epsilon_search_reports_nothing_pruned_and_leaves_the_dense_model(interrupted_runs, scenario):
    run = interrupted_runs[scenario]
    report = run["report"]
    assert run["unchanged"]  # the dense weights are back
    assert report is not None and report["completed"] is False
    assert report["blocks"] == [] and report["layers"] == 0  # no block is claimed pruned
    search = report["search"]
    assert search["completed"] is False and search["chosen"] is None
    assert len(search["heldout_perplexity"]) == 1  # the first trial finished, the second did not


def test_a_prune_interrupted_before_block_0_has_an_empty_not_completed_report(interrupted_runs):
    run = interrupted_runs["wanda-allocation"]
    assert run["unchanged"]  # the model of the earlier, complete run is untouched
    assert run["report"] == {"completed": False, "blocks": [], "layers": 0, "structured": 0, "search": {}}


def test_width_then_unstructured_interrupted_before_its_second_stage_is_not_completed(interrupted_runs):
    run = interrupted_runs["width-second-stage"]
    report = run["report"]
    assert not run["unchanged"]  # the width stage did remove heads and channels...
    assert report["completed"] is False and report["blocks"] == [] and report["layers"] == 0
    assert report["structured"] == 3  # ...and the report keeps what it did to each of the three blocks


# --- item 3: width pruning refuses NaN/Inf in any block parameter before block 0 --------------------------

@pytest.mark.parametrize("where", ["model.layers.1.post_attention_layernorm.weight", "model.layers.2.mlp.up_proj.weight"])
def test_width_pruning_refuses_a_nan_anywhere_in_the_blocks_before_touching_the_model(where, tiny_tokenizer):
    model = make_tiny_model("llama", layers=3)
    with torch.no_grad():
        model.get_parameter(where).view(-1)[3] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    with pytest.raises(ModelStructureError, match=f"{where} contains 1 NaN/Inf values"):
        pruner.prune(AlphaPruningConfig(structure="width", sparsity=0.2, nsamples=2, seqlen=32), show_progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if "layers.1.post" not in k and "layers.2.mlp.up" not in k)
    assert all(before[k].shape == after[k].shape for k in before)


# --- item 4: prune_routers=True makes the routers prunable matrices (Mixtral's router is no Linear) ------

def test_prune_routers_prunes_mixtrals_routers_and_the_default_keeps_them_dense():
    from architectures import build

    config = dict(sparsity=0.5, method="magnitude", allocation="uniform")
    _, dense_routers = AlphaPruner(build("mixtral"), show_progress=False).prune(AlphaPruningConfig(**config),
                                                                             show_progress=False)
    assert "model.layers.0.mlp.gate.weight" in dense_routers.ignored
    assert not any(name.endswith("mlp.gate") for name in dense_routers.layers)
    model = build("mixtral")
    _, report = AlphaPruner(model, show_progress=False).prune(AlphaPruningConfig(**config, prune_routers=True),
                                                              show_progress=False)
    assert report.ignored == {}
    routers = [name for name in report.layers if name.endswith("mlp.gate")]
    assert len(routers) == len(model.model.layers) and all(report.layers[name] == 0.5 for name in routers)
    weight = model.model.layers[0].mlp.gate.weight
    assert float((weight == 0).float().mean()) == 0.5  # really zeroed in the model, not only reported


# --- item 6: typed fields added since the last round, and unknown quantize() keywords ------------------

TYPED_FIELDS = [
    ("epsilon", [0.3], "epsilon must be a number (float) or a string, got [0.3] (list)"),
    ("epsilon", None, "epsilon must be a number (float) or a string, got None"),
    ("epsilon_grid", "0.1", "epsilon_grid must be a list of numbers, got the string '0.1'; write [0.1]"),
    ("epsilon_grid", 0.3, "epsilon_grid must be a list of numbers, got 0.3 (float)"),
    ("epsilon_grid", None, "epsilon_grid must be a list of numbers, got None"),
    ("epsilon_grid", [0.1, "0.2"], "epsilon_grid[1] must be a number (float), got the string '0.2'"),
    ("ignore", 5, "ignore must be a list of strings, got 5 (int)"),
    ("ignore", [5], "ignore[0] must be a string, got 5 (int)"),
]


@pytest.mark.parametrize("field,value,message", TYPED_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in TYPED_FIELDS])
def test_list_and_union_fields_are_refused_by_type_through_the_api_and_config_files(field, value, message, tmp_path,
                                                                                     capsys):
    with pytest.raises(ConfigError, match=re.escape(message)):
        AlphaPruningConfig(**{field: value})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({field: value}))
    code, err = run_cli(["prune", "model-never-loaded", "--config", str(config), "--output", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_the_accepted_forms_of_those_fields_still_work():
    assert AlphaPruningConfig(epsilon="auto").epsilon == "auto" and AlphaPruningConfig(epsilon=0.2).epsilon == 0.2
    assert AlphaPruningConfig(epsilon_grid=[0.1, 0.2]).epsilon_grid == (0.1, 0.2)
    assert AlphaPruningConfig(ignore="re:.*gate").ignore == ["re:.*gate"]
    assert AlphaPruningConfig(ignore=("a", "b")).ignore == ["a", "b"]


def test_quantize_with_an_unknown_keyword_is_a_config_error_before_pruning(tmp_path):
    model = make_tiny_model("llama", layers=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"Unknown config field\(s\) \['bogus'\]"):
        AlphaPruner(model, show_progress=False).quantize(tmp_path / "out", bogus=1, method="magnitude")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not (tmp_path / "out").exists()


# --- item 9: corrupt sparse shards name the tensor and the problem in the error itself --------------------

def _sparse_folder(tmp_path: Path) -> Path:
    from optimum_alpha.checkpoint import save_pruned

    model = make_tiny_model("llama", layers=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and ".layers." in name:
                param[param.abs() < param.abs().quantile(0.7)] = 0
    return save_pruned(model, tmp_path / "sparse")


def _float_bitmask(tensors: dict) -> None:
    key = "model.layers.0.self_attn.k_proj.bitmask"
    tensors[key] = tensors[key].to(torch.float32)


def _negative_columns(tensors: dict) -> None:
    key = "model.layers.0.self_attn.k_proj.shape"
    tensors[key] = torch.tensor([tensors[key][0], -tensors[key][1]], dtype=torch.int64)


@pytest.mark.parametrize("corrupt,cause", [(_float_bitmask, "the bitmask is stored as float32, not uint8"),
                                           (_negative_columns, r"the stored dense shape \[32, -64\] has a dimension")])
def test_corrupt_bitmask_shards_name_the_tensor_and_the_problem(corrupt, cause, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from optimum_alpha import load_pruned

    folder = _sparse_folder(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    corrupt(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    message = f"module model.layers.0.self_attn.k_proj was not restored .{cause}"
    with pytest.raises(CheckpointError, match=message):
        load_pruned(folder)
    with pytest.raises(CheckpointError, match=message):
        AutoModelForCausalLM.from_pretrained(folder)


# --- item 2: a dense folder of ours with a missing tensor never loads; other people's folders load as before --

def _drop_tensor(folder: Path, name: str = "model.layers.0.mlp.up_proj.weight") -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors[name]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def dense_folder(tmp_path_factory) -> Path:
    from optimum_alpha.checkpoint import save_pruned

    return save_pruned(make_tiny_model("llama", layers=1), tmp_path_factory.mktemp("dense") / "dense", format="dense")


def test_a_dense_folder_of_ours_with_a_missing_tensor_is_refused_everywhere(dense_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from optimum_alpha import load_pruned

    recorded = json.loads((dense_folder / "alpha_pruning.json").read_text())["tensors"]
    assert "model.layers.0.mlp.up_proj.weight" in recorded and len(recorded) == 12
    load_pruned(dense_folder)  # whole: loads
    folder = tmp_path / "dense"
    shutil.copytree(dense_folder, folder)
    _drop_tensor(folder)
    with pytest.raises(CheckpointError, match="lack model.layers.0.mlp.up_proj.weight .1 of the 12 tensors"):
        load_pruned(folder)
    with pytest.raises(CheckpointError, match="lack model.layers.0.mlp.up_proj.weight, which would keep a random"):
        AutoModelForCausalLM.from_pretrained(folder)  # plain transformers, after `import optimum_alpha`
    code, err = run_cli(["eval", str(folder), "--max-windows", "1", "--seqlen", "8"], capsys)
    assert code == 2 and err[-1].startswith("error: dense checkpoint") and "up_proj.weight" in err[-1], err


def test_a_dense_folder_saved_before_the_tensor_list_is_checked_after_loading(dense_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from optimum_alpha import load_pruned

    folder = tmp_path / "dense"
    shutil.copytree(dense_folder, folder)
    metadata = json.loads((folder / "alpha_pruning.json").read_text())
    del metadata["tensors"]
    (folder / "alpha_pruning.json").write_text(json.dumps(metadata))
    _drop_tensor(folder)
    for load in (load_pruned, AutoModelForCausalLM.from_pretrained):
        with pytest.raises(CheckpointError, match="written by optimum-alpha.* lack model.layers.0.mlp.up_proj.weight"):
            load(folder)


def test_someone_elses_dense_folder_loads_as_transformers_loads_it(tmp_path):
    from transformers import AutoModelForCausalLM

    import optimum_alpha  # noqa: F401

    folder = tmp_path / "theirs"
    make_tiny_model("llama", layers=1).save_pretrained(folder)
    _drop_tensor(folder)
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == {"model.layers.0.mlp.up_proj.weight"}  # transformers' own behaviour


def test_the_check_is_in_place_when_optimum_alpha_is_imported_before_transformers(dense_folder, tmp_path):
    """In a fresh process the report function is wrapped before transformers' modeling_utils binds it."""
    folder = tmp_path / "dense"
    shutil.copytree(dense_folder, folder)
    _drop_tensor(folder)
    script = ("import optimum_alpha\nfrom transformers import AutoModelForCausalLM\n"
              "from optimum_alpha.errors import CheckpointError\n"
              f"try:\n    AutoModelForCausalLM.from_pretrained({str(folder)!r})\nexcept CheckpointError as error:\n"
              "    print('refused:', error)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("refused:") and "up_proj.weight" in done.stdout, done.stderr


# --- item 8: permission problems of the output folder, in a real process that permission bits apply to -------

PERMISSION_CHILD = textwrap.dedent(
    """
    import contextlib, io, json, os, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import make_tiny_model
    from optimum_alpha.checkpoint import save_pruned
    from optimum_alpha.commands.cli import main
    from optimum_alpha.errors import CheckpointError

    work = Path(sys.argv[1])
    model = make_tiny_model("llama", layers=1)
    result = {{"uid": os.geteuid()}}
    # An existing output folder this user may not read.
    locked = work / "locked"
    locked.mkdir()
    (locked / "theirs.txt").write_text("x")
    locked.chmod(0)
    try:
        save_pruned(model, locked, format="dense")
        result["api"] = "saved"
    except CheckpointError as error:
        result["api"] = str(error)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(["prune", "never-loaded", "--output", str(locked), "--method", "magnitude"])
        except SystemExit as exit_:
            code = exit_.code
    result["cli"] = [code, err.getvalue().strip().splitlines()]
    locked.chmod(0o700)
    # Overwriting a checkpoint that holds a read-only folder of the user's (kept, so carried over).
    checkpoint = work / "ckpt"
    save_pruned(model, checkpoint, format="dense")
    notes = checkpoint / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("mine")
    notes.chmod(0o555)
    for _ in range(2):
        save_pruned(model, checkpoint, format="dense", overwrite=True)
    result["left"] = sorted(name for name in os.listdir(work) if name.startswith(".ckpt."))
    result["notes"] = (checkpoint / "notes" / "readme.txt").read_text()
    print(json.dumps(result))
    """
).format(tests=str(TESTS))


def test_output_folder_permission_problems_are_one_line_and_leave_no_backup(tmp_path):
    import tempfile

    # Root ignores permission bits: as root the child runs without the capabilities that let it (setpriv).
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permission bits cannot be made to apply")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    work = Path(tempfile.mkdtemp(prefix="alpha-perm-", dir=tmp_path))
    env = {**child_env(), "HF_HOME": str(work / "hf")}
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", PERMISSION_CHILD, str(work)], capture_output=True,
                              text=True, env=env, timeout=600, cwd=str(work))
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for root, dirs, _ in os.walk(work):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(work, ignore_errors=True)
    assert result["api"].startswith(f"cannot read the save target {work / 'locked'} (Permission denied)")
    code, err = result["cli"]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot read the save target"), err
    assert result["left"] == []  # no backup of the overwritten checkpoint left behind
    assert result["notes"] == "mine"  # the user's read-only folder survived both overwrites


# --- item 7: calibration files and --config keys ---------------------------------------------------------

def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    from optimum_alpha.data import load_texts

    for name, content in (("bom.jsonl", '{"text": "first"}\n{"text": "second"}\n'), ("bom.json", '["first"]'),
                          ("bom.txt", "first")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + content.encode())
        assert load_texts(path)[0] == "first"


def test_deeply_nested_json_is_one_clear_error(tmp_path, capsys):
    from optimum_alpha.data import load_texts

    path = tmp_path / "nested.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(CalibrationDataError, match="nests JSON arrays or objects too deeply"):
        load_texts(path)
    code, err = run_cli(["prune", "model-never-loaded", "--calibration", str(path), "--output", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and len(err) == 1 and "too deeply" in err[0], err


class CountingTokenizer:
    """Wraps a tokenizer and records the longest text it was asked to tokenize."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **kwargs)


def test_one_huge_line_is_tokenized_only_as_far_as_the_windows_need(tiny_tokenizer, tmp_path):
    from optimum_alpha import data

    path = tmp_path / "one-line.jsonl"
    path.write_text(json.dumps({"text": " ".join(data.load_texts("c4")) * 6}) + "\n")
    size = len(data.load_texts(path)[0])
    assert size > 3 * data.DOCUMENT_CHARS
    for sampling in ("document", "joined"):
        spy = CountingTokenizer(tiny_tokenizer)
        sample = data.sample_calibration(spy, path, 4, 32, sampling=sampling)
        assert sample.ids.shape == (4, 32) and spy.longest <= data.DOCUMENT_CHARS


def test_a_tokenized_prefix_gives_the_windows_of_the_whole_text(tiny_tokenizer, monkeypatch):
    from optimum_alpha import data

    whole = data.sample_calibration(tiny_tokenizer, "wikitext2", 16, 64, sampling="joined")
    monkeypatch.setattr(data, "DOCUMENT_CHARS", 3000)  # prefixes of 8 chars per needed token, doubling
    spy = CountingTokenizer(tiny_tokenizer)
    cut = data.sample_calibration(spy, "wikitext2", 16, 64, sampling="joined")
    assert spy.longest < len("\n\n".join(data.load_texts("wikitext2")))  # a prefix really was used
    assert torch.equal(whole.ids, cut.ids)


def test_a_config_file_with_a_tokenizer_is_refused_by_the_command_line(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"sparsity": 0.5, "tokenizer": "gpt2"}))
    code, err = run_cli(["prune", "model-never-loaded", "--config", str(config), "--output", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and len(err) == 1 and "sets tokenizer='gpt2', which the command line does not use" in err[0]
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


# --- item 10: a save that reports success left a complete, loadable folder ---------------------------------

def test_a_save_whose_files_do_not_read_back_fails_and_leaves_nothing(tmp_path, monkeypatch):
    """A filesystem that loses the end of a file without an error (simulated) fails the save."""
    from optimum_alpha.checkpoint import save_pruned
    from optimum_alpha.checkpoint.writers.dense import DenseWriter

    original = DenseWriter.write

    def losing_write(self, model, folder, **kwargs):
        result = original(self, model, folder, **kwargs)
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        return result

    monkeypatch.setattr(DenseWriter, "write", losing_write)
    with pytest.raises(CheckpointError, match="do not read back .* truncated or not a safetensors file"):
        save_pruned(make_tiny_model("llama", layers=1), tmp_path / "out", format="dense")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_filesystems(tmp_path):
    """Mount tmpfs file systems of given sizes (root only; skipped where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(kilobytes: int) -> Path:
        folder = tmp_path / f"fs{len(mounted)}-{kilobytes}k"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
        mounted.append(folder)
        return folder

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")
    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_a_save_onto_a_too_small_filesystem_fails_cleanly_or_gives_a_loadable_folder(small_filesystems):
    """Sizes around what a two-block Llama needs (dense about 450 KB, sparse less): every save either raises
    CheckpointError and leaves the file system empty, or leaves a folder that loads bit for bit."""
    from optimum_alpha import load_pruned
    from optimum_alpha.checkpoint import save_pruned

    model = make_tiny_model("llama", layers=2)
    outcomes = set()
    for kilobytes, fmt in ((200, "dense"), (440, "dense"), (600, "dense"), (200, "sparse"), (600, "sparse")):
        root = small_filesystems(kilobytes)
        try:
            save_pruned(model, root / "out", format=fmt)
        except CheckpointError as error:
            assert "No space left on device" in str(error) or "do not read back" in str(error), error
            assert os.listdir(root) == []
            outcomes.add("refused")
            continue
        loaded = load_pruned(root / "out")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
        outcomes.add("saved")
    assert outcomes == {"refused", "saved"}  # the sizes really straddle the limit


# --- item 11: width pruning then N:M rounds the kept MLP channels to whole groups of M ---------------------

@pytest.mark.parametrize("sparsity", [0.2, 0.27])
def test_width_pruning_then_nm_keeps_whole_groups_of_m(sparsity, tiny_tokenizer):
    from optimum_alpha.structured.layout import block_layout, plan_block

    model = make_tiny_model("llama", layers=3)
    dense_layouts = [block_layout(block, i) for i, block in enumerate(make_tiny_model("llama", layers=3).model.layers)]
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tiny_tokenizer, show_progress=False)
    config = AlphaPruningConfig(structure="width", sparsity=sparsity, nm="2:4", method="magnitude", nsamples=2,
                                seqlen=32)
    _, report = pruner.prune(config, show_progress=False)
    assert report.completed and report.sparsity_structure == "2:4"
    unrounded = [plan_block(layout, entry["target_fraction"], i).width.intermediate_size
                 for i, (layout, entry) in enumerate(zip(dense_layouts, report.structured))]
    assert any(kept % 4 for kept in unrounded)  # without the rounding this run could not take 2:4
    for index, block in enumerate(model.model.layers):
        kept = block.mlp.down_proj.in_features
        assert kept % 4 == 0 and abs(kept - unrounded[index]) <= 2
        assert report.structured[index]["width"]["intermediate_size"] == kept
        groups = block.mlp.down_proj.weight.reshape(-1, 4)
        assert torch.equal((groups != 0).sum(dim=1), torch.full((groups.shape[0],), 2))


# --- item 12: a stalled Hub endpoint ends the push with a time-out and the command to push again ---------

@pytest.fixture
def stalled_server():
    """A local HTTP endpoint that accepts connections, reads the request and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            held.append(connection)  # kept open, never answered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for connection in held:
        connection.close()
    server.close()


def test_a_stalled_hub_endpoint_times_out_with_the_retry_command(stalled_server, dense_folder, tmp_path):
    """Through the command line: ``push --timeout 1`` ends in one error line whose retry keeps the time-out."""
    script = ("import sys, time\nfrom optimum_alpha.commands.cli import main\nstart = time.monotonic()\n"
              "try:\n    code = main()\nexcept SystemExit as stop:\n    code = stop.code\n"
              "print(f'{time.monotonic() - start:.1f}', code)\n")
    env = {key: value for key, value in child_env().items() if key != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=stalled_server, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_TOKEN="hf_not_a_real_token")
    done = subprocess.run([sys.executable, "-c", script, "push", str(dense_folder), "me/model", "--timeout", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    seconds, code = done.stdout.strip().split()
    message = done.stderr.strip().splitlines()[-1]
    assert code != "0" and message.startswith(
        "error: pushing me/model timed out: the Hub sent or accepted nothing for 1 s"), done.stderr[-2000:]
    assert message.endswith(f"retry with: optimum-cli alpha-prune push {dense_folder} me/model --timeout 1")
    assert float(seconds) < 120  # without the time-out the push waits forever


def test_push_timeout_flags_refuse_non_positive_seconds(capsys):
    from optimum_alpha.commands.cli import main

    for argv in (["push", "folder", "me/model", "--timeout", "0"], ["prune", "m", "--push-timeout", "soon"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "must be more than 0 seconds, got 0" in err and "expected a number of seconds, got 'soon'" in err


def test_the_stall_timeout_puts_the_previous_client_factory_back():
    from huggingface_hub.utils import _http

    from optimum_alpha.checkpoint.hub import stall_timeout

    before = _http._GLOBAL_CLIENT_FACTORY
    with stall_timeout(3):
        assert _http.get_session().timeout.read == 3
    assert _http._GLOBAL_CLIENT_FACTORY is before and _http.get_session().timeout.read is None
