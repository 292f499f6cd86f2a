"""The guarantees of issue 16 (docs/guarantees.md): never lose a folder, never load a wrong weight, never
print a traceback for a user's mistake. Real processes race, get killed and get interrupted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_model
from optimum_alpha.checkpoint import save_pruned
from optimum_alpha.checkpoint import target as target_module
from optimum_alpha.errors import CheckpointError

TESTS = Path(__file__).parent
REPO = TESTS.parent

# A child process that saves a tiny Llama (seed from argv) to a folder; see each test for the mode. Every
# handshake waits on files, never on the clock (the tests must pass on a loaded machine).
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import make_tiny_model
    from optimum_alpha.checkpoint import save as save_module, target as target_module
    from optimum_alpha.errors import CheckpointError

    mode, seed, target, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    model = make_tiny_model("llama", seed=seed, layers=1)
    if mode == "race":  # both processes pass the start checks, then put their folder in place together
        original = save_module.put_in_place

        def put_in_place(*args):
            (sync / f"ready-{{seed}}").touch()
            while not (sync / "go").exists():
                time.sleep(0.005)
            return original(*args)

        save_module.put_in_place = put_in_place
        try:
            save_module.save_pruned(model, target, format="dense")
        except CheckpointError as error:
            print(f"error: {{error}}", flush=True)
            sys.exit(2)
        print("saved", flush=True)
    else:  # "<signal>@<point>": save once, then send the signal to itself at that point of a second save
        name, point = mode.split("@")
        save_module.save_pruned(model, target, format="dense")
        def stop(*args, **kwargs):
            os.kill(os.getpid(), getattr(signal, name))
            time.sleep(1)  # SIGTERM is delivered (as KeyboardInterrupt) before the sleep ends
            raise AssertionError(f"{{name}} did not stop the save")
        if point == "written":  # every file is in the staging folder, nothing is in place yet
            save_module.check_written = stop
        else:  # "swapped": the new folder is in place, the old one is being removed
            remove_tree = target_module.remove_tree
            def remove_backup(path):
                if ".old-" in Path(path).name:
                    stop()
                return remove_tree(path)
            target_module.remove_tree = remove_backup
        save_module.save_pruned(make_tiny_model("llama", seed=seed + 100, layers=1), target, format="dense",
                                overwrite=True)
    """
).format(tests=str(TESTS))

# Safety net only: how long a child may take before the test gives up (it never decides an outcome).
CHILD_TIMEOUT = 900


def start_child(*args: str, log: Path) -> subprocess.Popen:
    """The child's stderr goes to ``log`` (a pipe nobody reads would fill up and block a long loop)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )


def weights_of(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def same_as_seed(folder: Path, seed: int) -> bool:
    expected = make_tiny_model("llama", seed=seed, layers=1).state_dict()
    return all(torch.equal(tensor, expected[key]) for key, tensor in weights_of(folder).items())


def leftovers(parent: Path) -> list[str]:
    return sorted(name for name in os.listdir(parent) if ".tmp-" in name or ".old-" in name)


# --- 1. concurrent saves -------------------------------------------------------------------------


def test_two_processes_saving_to_the_same_new_folder_one_wins_the_other_gets_an_error(tmp_path):
    target, sync = tmp_path / "out", tmp_path / "sync"
    sync.mkdir()
    children = {
        seed: start_child("race", str(seed), str(target), str(sync), log=sync / f"log-{seed}") for seed in (1, 2)
    }
    while len(list(sync.glob("ready-*"))) < 2 and all(child.poll() is None for child in children.values()):
        time.sleep(0.01)
    (sync / "go").touch()  # both are about to put their folder in place
    results = {seed: (child.wait(timeout=CHILD_TIMEOUT), child.stdout.read()) for seed, child in children.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], {seed: (sync / f"log-{seed}").read_text()[-2000:] for seed in children}
    winner = next(seed for seed, (code, _) in results.items() if code == 0)
    loser_out = next(out for code, out in results.values() if code == 2)
    assert loser_out.startswith("error: save target") and "created by another process" in loser_out
    assert same_as_seed(target, winner)  # the winner's folder, whole
    assert leftovers(tmp_path) == []


# --- 2. overwrite replaces only checkpoints of ours, never foreign files ----------------------------


def test_overwrite_refuses_foreign_and_protected_folders(tmp_path, monkeypatch):
    model = make_tiny_model("llama", layers=1)
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match="not a checkpoint written by optimum-alpha.*force"):
        save_pruned(model, foreign, overwrite=True)
    assert os.listdir(foreign) == ["thesis.tex"]
    monkeypatch.chdir(foreign)
    for where in (".", "", str(tmp_path), str(Path.home()), "/"):
        for overwrite in (True, "force"):
            with pytest.raises(CheckpointError, match="refusing to save into"):
                save_pruned(model, where, overwrite=overwrite)
    with pytest.raises(CheckpointError, match="overwrite must be False, True or 'force'"):
        save_pruned(model, tmp_path / "new", overwrite="yes")
    assert sorted(os.listdir(tmp_path)) == ["data"]


def test_forced_overwrite_keeps_every_file_a_checkpoint_did_not_write(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "config.json").write_text("{}")  # same name as a checkpoint file: replaced
    (target / "runs").mkdir()
    (target / "runs" / "log.txt").write_text("log")
    save_pruned(make_tiny_model("llama", seed=1, layers=1), target, overwrite="force", format="dense")
    manifest = json.loads((target / "alpha_pruning.json").read_text())["files"]
    assert "notes.txt" not in manifest and "config.json" in manifest and "model.safetensors" in manifest
    # Overwriting our own checkpoint replaces the files of the manifest only.
    save_pruned(make_tiny_model("llama", seed=2, layers=1), target, overwrite=True, format="dense")
    assert (target / "notes.txt").read_text() == "mine" and (target / "runs" / "log.txt").read_text() == "log"
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert same_as_seed(target, 2) and leftovers(tmp_path) == []


# --- 13. kills at random points leave nothing that survives the next save -------------------------


@pytest.mark.parametrize("mode", ["SIGKILL@written", "SIGKILL@swapped", "SIGTERM@written"])
def test_killed_saves_leave_no_staging_folder_after_the_next_save(mode, tmp_path):
    """A save killed (SIGKILL: no clean-up at all) or stopped (SIGTERM, as ``timeout`` and SLURM do) at a
    fixed point: the folder on disk is always one whole checkpoint, and the next save leaves nothing behind."""
    target, sync = tmp_path / "run" / "out", tmp_path / "sync"
    sync.mkdir()
    child = start_child(mode, "1", str(target), str(sync), log=tmp_path / "log")
    code = child.wait(timeout=CHILD_TIMEOUT)
    log = (tmp_path / "log").read_text()
    if mode.startswith("SIGTERM"):  # like Ctrl-C inside a save: the staging folder is removed at once
        assert code == 1 and "KeyboardInterrupt" in log and "did not stop" not in log, log[-3000:]
        assert leftovers(target.parent) == [] and same_as_seed(target, 1)  # the first save, untouched
    else:
        assert code == -signal.SIGKILL, log[-3000:]
        assert leftovers(target.parent) != []  # what SIGKILL leaves: the staging or the half-removed old folder
        assert same_as_seed(target, 1 if mode.endswith("written") else 101)  # a whole checkpoint either way
    save_pruned(make_tiny_model("llama", seed=2, layers=1), target, overwrite=True, format="dense")
    assert leftovers(target.parent) == [] and same_as_seed(target, 2)


def test_sweep_spares_live_saves_and_other_names(tmp_path):
    target = tmp_path / "out"
    live = tmp_path / f".out.tmp-{target_module._host()}-{os.getpid()}-0123abcd"
    other = tmp_path / ".out.tmp-notours"
    for folder in (live, other):
        folder.mkdir()
    save_pruned(make_tiny_model("llama", layers=1), target, format="dense")
    assert live.is_dir() and other.is_dir()


# --- 3, 6, 11. the loader refuses broken checkpoints with one clear error ---------------------------


def pruned_tiny(seed: int = 0) -> torch.nn.Module:
    """A one-block Llama with 70 % of each block weight zeroed (so the sparse format compresses it)."""
    model = make_tiny_model("llama", seed=seed, layers=1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and ".layers." in name:
                param[param.abs() < param.abs().quantile(0.7)] = 0
    return model


def _rewrite_weights(folder: Path, change) -> None:
    from safetensors.torch import save_file

    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _drop_module(folder: Path) -> None:
    def change(tensors):
        for key in [k for k in tensors if k.startswith("model.layers.0.self_attn.k_proj.")]:
            del tensors[key]

    _rewrite_weights(folder, change)


def _one_value_too_many(folder: Path) -> None:
    def change(tensors):
        key = "model.layers.0.self_attn.k_proj.compressed"
        tensors[key] = torch.cat([tensors[key], tensors[key][:1]])

    _rewrite_weights(folder, change)


def _edit_json(name: str, change):
    def edit(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return edit


def _shard_outside(where: str):
    def edit(folder: Path) -> None:
        outside = folder.parent / "outside.safetensors"
        os.replace(folder / "model.safetensors", outside)
        target = str(outside) if where == "absolute" else "../outside.safetensors"
        weight_map = {key: target for key in load_file(str(outside))}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    return edit


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


CORRUPTIONS = {
    "missing-module": (_drop_module, "lists module model.layers.0.self_attn.k_proj but its files lack"),
    "popcount-mismatch": (_one_value_too_many, "bitmask marks"),
    "index-parent-dir": (_shard_outside("relative"), "outside the checkpoint folder"),
    "index-absolute": (_shard_outside("absolute"), "outside the checkpoint folder"),
    "weight-map-not-a-dict": (
        lambda f: (_shard_outside("relative")(f), _edit_json("model.safetensors.index.json",
                                                              lambda d: d.update(weight_map=[]))(f)),
        "no valid 'weight_map'",
    ),
    "quantization-config-string": (
        _edit_json("config.json", lambda d: d.update(quantization_config="alpha_sparse")),
        "malformed quantization_config",
    ),
    "compressed-modules-number": (
        _edit_json("config.json", lambda d: d["quantization_config"].update(compressed_modules=5)),
        "compressed_modules must be a list",
    ),
    "unknown-sparse-format": (
        _edit_json("config.json", lambda d: d["quantization_config"].update(format="bogus")),
        "is not 'sparse-bitmask'",
    ),
    "no-model-type": (_edit_json("config.json", lambda d: d.pop("model_type")), "has no 'model_type'"),
    "truncated-weights": (_truncate, "truncated or not a safetensors file"),
    "config-not-json": (lambda f: (f / "config.json").write_text("{"), "cannot be read as JSON"),
}


@pytest.fixture(scope="module")
def sparse_folder(tmp_path_factory) -> Path:
    return save_pruned(pruned_tiny(), tmp_path_factory.mktemp("ckpt") / "sparse")


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_checkpoints_are_refused_by_load_pruned_and_the_cli(case, sparse_folder, tmp_path, capsys):
    import shutil

    from optimum_alpha import load_pruned
    from optimum_alpha.commands.cli import main

    folder = tmp_path / "ckpt"
    shutil.copytree(sparse_folder, folder)
    corrupt, message = CORRUPTIONS[case]
    corrupt(folder)
    with pytest.raises(CheckpointError, match=message):
        load_pruned(folder)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(folder), "--max-windows", "1", "--seqlen", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("error: ") and message.split("'")[0] in err[-1]
    assert not any("Traceback" in line for line in err)


@pytest.mark.parametrize("case", ["missing-module", "popcount-mismatch"])
def test_plain_from_pretrained_refuses_a_sparse_checkpoint_with_an_unrestored_module(case, sparse_folder, tmp_path):
    """Without load_pruned's checks, the plug-in itself verifies that every listed module was rebuilt."""
    import shutil

    from transformers import AutoModelForCausalLM

    import optimum_alpha  # noqa: F401  (registers the plug-in)

    folder = tmp_path / "ckpt"
    shutil.copytree(sparse_folder, folder)
    CORRUPTIONS[case][0](folder)
    cause = "no model weight matches" if case == "missing-module" else r"bitmask marks \d+ kept values but \d+"
    with pytest.raises(CheckpointError, match=f"model.layers.0.self_attn.k_proj was not restored .{cause}"):
        AutoModelForCausalLM.from_pretrained(folder)


# --- 8. typed config values: one clear error, through the API and the CLI ------------------------

BAD_CONFIG_VALUES = [
    ("sparsity", "0.5", "sparsity must be a number (float), got the string '0.5'; write 0.5 without quotes"),
    ("sparsity", None, "sparsity must be a number (float), got None"),
    ("sparsity", True, "sparsity must be a number (float), got True (bool)"),
    ("epsilon", float("inf"), "epsilon must be a finite number, got inf"),
    ("percdamp", float("inf"), "percdamp must be a finite number, got inf"),
    ("percdamp", float("nan"), "percdamp must be a finite number, got nan"),
    ("nsamples", float("nan"), "nsamples must be a finite number, got nan"),
    ("nsamples", float("inf"), "nsamples must be a finite number, got inf"),
    ("nsamples", "64", "nsamples must be a whole number (int), got the string '64'"),
    ("seqlen", 2.5, "seqlen must be a whole number (int), got 2.5"),
    ("seed", None, "seed must be a whole number (int), got None"),
    ("seed", float("nan"), "seed must be a finite number, got nan"),
    ("blocksize", [128], "blocksize must be a whole number (int), got [128] (list)"),
    ("method", 3, "method must be a string, got 3 (int)"),
    ("nm", 24, "nm must be a string, got 24 (int)"),
]


@pytest.mark.parametrize("field,value,message", BAD_CONFIG_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_CONFIG_VALUES])
def test_wrongly_typed_config_values_are_refused_by_type(field, value, message):
    from optimum_alpha import AlphaPruningConfig
    from optimum_alpha.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        AlphaPruningConfig(**{field: value})
    assert message in str(info.value)


def test_config_types_come_from_the_declarations_so_new_fields_are_covered():
    """A field added to the dataclass is checked by its annotation with no other code (here: a subclass)."""
    from dataclasses import dataclass

    from optimum_alpha import AlphaPruningConfig
    from optimum_alpha.errors import ConfigError

    @dataclass
    class Extended(AlphaPruningConfig):
        flag: bool = False
        ratio: float | None = None

    assert Extended(ratio=1).ratio == 1.0 and isinstance(Extended(ratio=1).ratio, float)
    assert AlphaPruningConfig(nsamples=64.0).nsamples == 64 and AlphaPruningConfig(seqlen=None).seqlen is None
    assert AlphaPruningConfig(nsamples=None).nsamples is None  # None: the paper's 128, or what the source holds
    with pytest.raises(ConfigError, match="flag must be true or false"):
        Extended(flag="yes")
    with pytest.raises(ConfigError, match="ratio must be a finite number"):
        Extended(ratio=float("-inf"))


def run_cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    """The CLI's main() in-process: its exit code and the stderr lines."""
    from optimum_alpha.commands.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip().splitlines()


CONFIG_FILES = {
    "sparsity-string": ('{"sparsity": "0.5"}', "sparsity must be a number (float), got the string '0.5'"),
    "seed-null": ('{"seed": null}', "seed must be a whole number (int), got None"),
    "seqlen-float": ('{"seqlen": 2.5}', "seqlen must be a whole number (int), got 2.5"),
    "nan": ('{"epsilon": NaN}', "epsilon must be a finite number, got nan"),
    "top-level-list": ("[0.5]", "must hold a JSON object"),
    "not-utf8": (b"\xff\xfe{", "is not valid UTF-8 JSON"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_bad_config_files_end_as_one_error_line_with_exit_code_2(case, tmp_path, capsys):
    content, message = CONFIG_FILES[case]
    config = tmp_path / "config.json"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = run_cli(["prune", "model-never-loaded", "--config", str(config), "--output", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


# --- 9. malformed calibration files ----------------------------------------------------------------


def _parquet(rows: dict) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(rows), buffer)
    return buffer.getvalue()


CALIBRATION_FILES = {
    "non-utf8.txt": (b"caf\xe9 " * 10, "is not UTF-8 text"),
    "null.json": (b"null", "holds a JSON NoneType"),
    "number.json": (b"42", "holds a JSON int"),
    "string.json": (b'"just a string"', "holds a JSON str"),
    "text-number.json": (b'[{"text": 5}]', "row 1 of"),
    "no-text.jsonl": (b'{"body": "x"}\n', "has no 'text' field"),
    "number-row.jsonl": (b'{"text": "fine"}\n7\n', "row 2 of"),
    "broken.jsonl": (b'{"text": \n', "is not valid JSON"),
    "corrupt.parquet": (b"PAR1 this is not parquet PAR1", "is not a readable parquet file"),
    "no-text.parquet": (None, "has no 'text' column"),
}


@pytest.mark.parametrize("name", sorted(CALIBRATION_FILES))
def test_malformed_calibration_files_are_one_clear_error(name, tmp_path, capsys):
    from optimum_alpha.data import load_texts
    from optimum_alpha.errors import CalibrationDataError

    content, message = CALIBRATION_FILES[name]
    path = tmp_path / name
    path.write_bytes(_parquet({"body": ["x"]}) if content is None else content)
    with pytest.raises(CalibrationDataError, match=message):
        load_texts(path)
    code, err = run_cli(["prune", "model-never-loaded", "--calibration", str(path), "--output", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0], err


def test_a_json_file_holding_one_text_object_is_one_row(tmp_path):
    from optimum_alpha.data import load_texts

    path = tmp_path / "one.json"
    path.write_text(json.dumps({"text": "one whole document"}))
    assert load_texts(path) == ["one whole document"]


# --- 7. published files carry names, never local paths ---------------------------------------------


def test_no_local_path_reaches_the_saved_files(tmp_path, tiny_tokenizer):
    from optimum_alpha import AlphaPruner, AlphaPruningConfig
    from optimum_alpha.data import load_texts

    private = tmp_path / "home-of-alice"
    source = private / "my-model"
    make_tiny_model("llama", layers=1).save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    calibration = private / "notes.jsonl"
    calibration.write_text("".join(json.dumps({"text": row}) + "\n" for row in load_texts("c4")[:60]))
    pruner = AlphaPruner.from_pretrained(str(source), show_progress=False)
    pruner.prune(AlphaPruningConfig(method="wanda", calibration_dataset=str(calibration), nsamples=2, seqlen=32),
                 show_progress=False)
    folder = pruner.save_pretrained(tmp_path / "out")
    for path in folder.iterdir():
        assert b"home-of-alice" not in path.read_bytes(), path.name
    data = json.loads((folder / "alpha_pruning.json").read_text())
    assert data["base_model"] == "my-model" and data["calibration"]["dataset"] == "notes.jsonl"
    assert data["config"]["calibration_dataset"] == "notes.jsonl"


# --- 10. save options are checked before pruning ---------------------------------------------------


@pytest.mark.parametrize("save_kwargs,message", [
    ({"format": "bogus"}, "unknown checkpoint format 'bogus'"),
    ({"max_shard_size": "abc"}, "invalid max_shard_size 'abc'"),
    ({"max_shard_size": -5}, "invalid max_shard_size -5"),
    ({"max_shard_size": 1.5}, "max_shard_size must be a number of bytes"),
    ({"overwrite": "sure"}, "overwrite must be False, True or 'force'"),
])
def test_quantize_refuses_bad_save_options_before_pruning(save_kwargs, message, tmp_path):
    from optimum_alpha import AlphaPruner

    model = make_tiny_model("llama", layers=1)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    pruner = AlphaPruner.from_pretrained(model, show_progress=False)
    with pytest.raises(CheckpointError, match=message):
        pruner.quantize(tmp_path / "out", method="magnitude", **save_kwargs)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # not pruned
    assert pruner.last_report is None and os.listdir(tmp_path) == []


def test_cli_refuses_a_bad_max_shard_size_before_loading(tmp_path, capsys):
    code, err = run_cli(["prune", "model-never-loaded", "--max-shard-size", "abc", "--output", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and len(err) == 1 and "invalid max_shard_size 'abc'" in err[0]


def test_cli_turns_a_bad_device_map_into_one_line(sparse_folder, capsys):
    code, err = run_cli(["eval", str(sparse_folder), "--device-map", "foo", "--max-windows", "1"], capsys)
    assert code == 2 and err[-1].startswith("error: Could not load model") and "foo" in err[-1], err


@pytest.mark.parametrize("failure", ["connect", "timeout", "oserror"])
def test_network_failures_during_push_are_one_clear_error(failure, sparse_folder):
    import requests

    from optimum_alpha.checkpoint import push_folder_to_hub

    error = {"connect": requests.ConnectionError("connection refused"), "timeout": requests.ReadTimeout("timed out"),
             "oserror": ConnectionResetError(104, "Connection reset by peer")}[failure]

    class Unreachable:
        def create_repo(self, *args, **kwargs):
            raise error

    with pytest.raises(CheckpointError, match="the Hub could not be reached"):
        push_folder_to_hub(sparse_folder, "me/model", api=Unreachable())


# --- 12. mount points, disk space, a full disk ------------------------------------------------------


def safetensors_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors*"))


def test_sparse_save_never_holds_more_than_the_final_folder(tmp_path, monkeypatch):
    """Sharded: the staging folder's weight files never exceed the final ones (no dense copy on disk)."""
    import transformers.modeling_utils

    from optimum_alpha.checkpoint import sparse_files

    peak = [0]
    for module, attr in ((transformers.modeling_utils, "safe_save_file"), (sparse_files, "save_file")):
        def measured(tensors, filename, *args, _original=getattr(module, attr), **kwargs):
            result = _original(tensors, filename, *args, **kwargs)
            peak[0] = max(peak[0], safetensors_bytes(Path(filename).parent))
            return result

        monkeypatch.setattr(module, attr, measured)
    model = pruned_tiny()
    folder = save_pruned(model, tmp_path / "out", max_shard_size="40KB")
    assert len(list(folder.glob("*.safetensors"))) >= 3
    assert 0 < peak[0] <= safetensors_bytes(folder)
    from optimum_alpha import load_pruned

    loaded = load_pruned(folder)
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("error", ["enospc", "safetensors"])
def test_a_full_disk_is_one_clear_error_and_changes_nothing(error, tmp_path, monkeypatch):
    import errno

    import transformers.modeling_utils
    from safetensors import SafetensorError

    target = save_pruned(pruned_tiny(1), tmp_path / "out", format="dense")
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def full(*args, **kwargs):
        if error == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    with pytest.raises(CheckpointError, match="saving to .* failed: .*(No space left|StorageFull).*nothing was changed"):
        save_pruned(pruned_tiny(2), target, overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before and leftovers(tmp_path) == []


@pytest.fixture
def mount_point(tmp_path, monkeypatch):
    """An empty folder that behaves like a volume root: renaming it, or onto it, fails with EBUSY."""
    import errno

    target = tmp_path / "volume"
    target.mkdir()
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        if target in (Path(src), Path(dst)):
            raise OSError(errno.EBUSY, "Device or resource busy", str(target))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(target_module.os, "rename", rename)
    monkeypatch.setattr(target_module, "is_mount_point", lambda folder: folder == target)
    return target


def test_saving_into_a_mount_point_and_overwriting_it(mount_point, tmp_path):
    save_pruned(pruned_tiny(1), mount_point)
    assert (mount_point / "config.json").is_file() and leftovers(tmp_path) == []
    assert sorted(json.loads((mount_point / "alpha_pruning.json").read_text())["files"]) == sorted(
        os.listdir(mount_point))  # no lock or staging folder left inside
    (mount_point / "notes.txt").write_text("mine")
    save_pruned(pruned_tiny(2), mount_point, overwrite=True, format="dense")
    assert (mount_point / "notes.txt").read_text() == "mine" and same_as_seed_pruned(mount_point, 2)
    assert not any(name.endswith(".safetensors.index.json") or ".tmp-" in name for name in os.listdir(mount_point))


def same_as_seed_pruned(folder: Path, seed: int) -> bool:
    expected = pruned_tiny(seed).state_dict()
    return all(torch.equal(tensor, expected[key]) for key, tensor in weights_of(folder).items())


def test_a_second_save_into_a_mount_point_being_written_is_refused(mount_point):
    (mount_point / target_module.LOCK_FILE).write_text(f"{os.getpid()} {target_module._host()}\n")
    with pytest.raises(CheckpointError, match="another save is writing into"):
        save_pruned(pruned_tiny(), mount_point)


# --- 13. interrupts: after the swap, and during start-up ----------------------------------------------


@pytest.fixture
def default_sigint():
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, outer)


def test_ctrl_c_while_the_old_folder_is_deleted_does_not_fail_the_finished_save(tmp_path, monkeypatch,
                                                                               default_sigint):
    target = save_pruned(pruned_tiny(1), tmp_path / "out", format="dense")
    real_rmtree = target_module.shutil.rmtree

    def rmtree(path, *args, **kwargs):
        if ".old-" in str(path):
            os.kill(os.getpid(), signal.SIGINT)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(target_module.shutil, "rmtree", rmtree)
    assert save_pruned(pruned_tiny(2), target, overwrite=True, format="dense") == target
    assert same_as_seed_pruned(target, 2) and leftovers(tmp_path) == []


def test_ctrl_c_during_cli_start_up_exits_130_without_a_traceback(tmp_path):
    """Ctrl-C while the command line imports torch and transformers (seconds): exit 130, one line. The
    child interrupts itself the moment it starts importing the pipeline, so the test does not depend on how
    fast the machine is."""
    code = textwrap.dedent(
        """
        import importlib.abc, os, signal, sys
        class InterruptOnImport(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "optimum_alpha.pruner":
                    os.kill(os.getpid(), signal.SIGINT)
                return None
        sys.meta_path.insert(0, InterruptOnImport())
        from optimum_alpha.commands.cli import main
        sys.exit(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.run(  # Python's own Ctrl-C handler, even when the tests run with SIGINT ignored
        [sys.executable, "-c", code, "eval", str(tmp_path / "no-model")], capture_output=True, text=True,
        env=env, timeout=CHILD_TIMEOUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    err = process.stderr
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err[-3000:]
    assert "Traceback" not in err


# --- 14. file modes and negative zeros ---------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_files_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        folder = save_pruned(pruned_tiny(), tmp_path / "out")
    finally:
        os.umask(old)
    assert (folder.stat().st_mode & 0o777) == 0o777 & ~umask
    assert {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()} == {
        path.name: 0o666 & ~umask for path in folder.iterdir()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_negative_zero_and_nan_survive_the_sparse_format_bit_for_bit(dtype, tmp_path):
    from optimum_alpha import load_pruned
    from optimum_alpha.checkpoint import bitmask

    model = pruned_tiny().to(dtype)
    weight = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight[0, :5] = torch.tensor([-0.0, 0.0, -0.0, float("nan"), 1.0], dtype=dtype)

    def bits(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(torch.int16 if tensor.element_size() == 2 else torch.int32)

    parts = bitmask.compress(weight.detach())
    assert torch.equal(bits(bitmask.decompress(parts["compressed"], parts["bitmask"], parts["shape"])), bits(weight))
    loaded = load_pruned(save_pruned(model, tmp_path / "out"), dtype=dtype)
    for key, value in model.state_dict().items():
        assert torch.equal(bits(loaded.state_dict()[key]), bits(value)), key


def test_sigterm_is_held_like_ctrl_c_while_a_block_is_written(default_sigint):
    """The pruning loop writes each block inside hold_interrupts: a SIGTERM there lands after the block."""
    from optimum_alpha.interrupts import hold_interrupts, sigterm_as_interrupt

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            with hold_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the signal is delivered to the holding handler meanwhile
                finished.append("block written")
    assert finished == ["block written"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_overwriting_a_checkpoint_saved_before_the_manifest_removes_only_checkpoint_files(tmp_path):
    target = save_pruned(make_tiny_model("llama", seed=1, layers=1), tmp_path / "out", format="dense")
    metadata = json.loads((target / "alpha_pruning.json").read_text())
    del metadata["files"]  # as written by optimum-alpha 0.1
    (target / "alpha_pruning.json").write_text(json.dumps(metadata))
    (target / "model-00002-of-00002.safetensors").write_bytes(b"stale shard")
    (target / "notes.txt").write_text("mine")
    save_pruned(make_tiny_model("llama", seed=2, layers=1), target, overwrite=True, format="dense")
    assert (target / "notes.txt").read_text() == "mine" and not (target / "model-00002-of-00002.safetensors").exists()
    assert same_as_seed(target, 2)


def test_a_family_decided_by_a_later_shard_is_stored_whole(tmp_path):
    """Shard 1 holds a dense member of a family whose member in shard 2 is sparse: both end as bitmasks
    (a fused-expert merge needs every member of a family stored the same way), one shard rewritten."""
    from safetensors.torch import save_file

    from optimum_alpha.checkpoint import sparse_files

    dense = torch.randn(16, 32)
    sparse = torch.randn(16, 32).masked_fill(torch.rand(16, 32) < 0.8, 0.0)
    names = {"a": "model.layers.0.mlp.experts.0.w1.weight", "b": "model.layers.1.mlp.experts.0.w1.weight"}
    save_file({names["a"]: dense, "model.norm.weight": torch.ones(32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({names["b"]: sparse}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {names["a"]: "model-00001-of-00002.safetensors", "model.norm.weight": "model-00001-of-00002.safetensors",
                  names["b"]: "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert sorted(sparse_files.compress_folder(tmp_path)) == sorted(names.values())
    first = load_file(str(tmp_path / "model-00001-of-00002.safetensors"))
    assert "model.layers.0.mlp.experts.0.w1.compressed" in first and names["a"] not in first
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["model.layers.0.mlp.experts.0.w1.bitmask"] == "model-00001-of-00002.safetensors"
    assert names["a"] not in index and "model.norm.weight" in index


def test_cli_overwrite_refusals_come_before_loading(tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    code, err = run_cli(["prune", "model-never-loaded", "--output", str(foreign), "--overwrite"], capsys)
    assert code == 2 and len(err) == 1 and "not a checkpoint written by optimum-alpha" in err[0]
    assert "--force-overwrite" in err[0]
    monkeypatch.chdir(foreign)
    for output in (".", ""):
        code, err = run_cli(["prune", "model-never-loaded", "--output", output, "--force-overwrite"], capsys)
        assert code == 2 and len(err) == 1 and "refusing to save into" in err[0]
    assert os.listdir(foreign) == ["thesis.tex"]
