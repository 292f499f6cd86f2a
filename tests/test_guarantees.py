"""The guarantees of issue 16 (docs/guarantees.md): never lose a folder, never load a wrong weight, never
print a traceback for a user's mistake. Real processes race, get killed and get interrupted here."""

from __future__ import annotations

import json
import os
import random
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
from optimum_alpha.checkpoint import save as save_module
from optimum_alpha.checkpoint import target as target_module
from optimum_alpha.errors import CheckpointError

TESTS = Path(__file__).parent
REPO = TESTS.parent

# A child process that saves a tiny Llama (seed from argv) to a folder; see each test for the mode.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import make_tiny_model
    from optimum_alpha.checkpoint import save as save_module
    from optimum_alpha.errors import CheckpointError

    mode, seed, target, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    model = make_tiny_model("llama", seed=seed, layers=1)
    if mode == "race":  # both processes pass the start checks, then put their folder in place together
        original = save_module.put_in_place

        def put_in_place(*args):
            (sync / f"ready-{{seed}}").touch()
            deadline = time.time() + 60
            while len(list(sync.glob("ready-*"))) < 2 and time.time() < deadline:
                time.sleep(0.005)
            return original(*args)

        save_module.put_in_place = put_in_place
        try:
            save_module.save_pruned(model, target, format="dense")
        except CheckpointError as error:
            print(f"error: {{error}}", flush=True)
            sys.exit(2)
        print("saved", flush=True)
    else:  # "loop": save over and over until killed
        (sync / f"ready-{{seed}}").touch()
        while True:
            save_module.save_pruned(model, target, format=("dense", "sparse")[seed % 2], overwrite=True)
    """
).format(tests=str(TESTS))


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
    results = {seed: (child.wait(timeout=120), child.stdout.read()) for seed, child in children.items()}
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


def test_killed_saves_leave_no_staging_folder_after_the_next_save(tmp_path):
    """One process killed with SIGKILL, one stopped with SIGTERM, each at a random moment of a save loop."""
    rng = random.Random(16)
    sync = tmp_path / "sync"
    sync.mkdir()
    signals = (signal.SIGKILL, signal.SIGTERM)
    targets = [tmp_path / f"run{i}" / "out" for i in range(len(signals))]
    children = [
        start_child("loop", str(i), str(target), str(sync), log=tmp_path / f"log-{i}")
        for i, target in enumerate(targets)
    ]
    deadline = time.time() + 120
    while len(list(sync.glob("ready-*"))) < len(children) and time.time() < deadline:
        time.sleep(0.05)
    for child, sig in zip(children, signals):
        time.sleep(rng.uniform(0.1, 0.6))
        child.send_signal(sig)
    for i, (child, sig, target) in enumerate(zip(children, signals, targets)):
        code = child.wait(timeout=60)
        if sig == signal.SIGTERM:  # like Ctrl-C inside a save (its staging folder is removed), else the default
            assert code == -signal.SIGTERM or "KeyboardInterrupt" in (tmp_path / f"log-{i}").read_text()
            assert leftovers(target.parent) == []
        else:
            assert code == -signal.SIGKILL
        save_pruned(make_tiny_model("llama", seed=i, layers=1), target, overwrite=True, format="dense")
        assert leftovers(target.parent) == [] and same_as_seed(target, i)


def test_sweep_spares_live_saves_and_other_names(tmp_path):
    target = tmp_path / "out"
    live = tmp_path / f".out.tmp-{target_module._host()}-{os.getpid()}-0123abcd"
    other = tmp_path / ".out.tmp-notours"
    for folder in (live, other):
        folder.mkdir()
    save_pruned(make_tiny_model("llama", layers=1), target, format="dense")
    assert live.is_dir() and other.is_dir()
