"""Interruptions: a save cut at any file write leaves the old folder or nothing; a prune cut at block k leaves
blocks 0..k-1 pruned exactly as an uninterrupted run would, blocks k.. untouched, and a report saying so."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils

from conftest import make_tiny_model
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha import matrices as matrices_module
from optimum_alpha.checkpoint import sparse_files
from optimum_alpha.data import load_texts
from optimum_alpha.errors import CheckpointError
from optimum_alpha.pruning import get_pruner_class

# --------------------------------------------------------------------------------------- fault injection
# An audit hook sees every file opened for writing, every rename and every mkdir made from Python, whoever
# makes it (save_pruned, transformers, tokenizers' Python side, matplotlib); the safetensors writers (Rust) are
# wrapped as well. Audit hooks cannot be removed, so this one does nothing unless a test arms it.

FAULTS: dict = {"root": None, "seen": [], "fail_at": None}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _is_write(event: str, args: tuple) -> str | None:
    """The path written by this audit event, or None when it writes nothing."""
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
        return str(path) if writes and isinstance(path, (str, bytes, os.PathLike)) else None
    if event == "os.rename":
        return str(args[1])
    if event == "os.mkdir" and not os.path.isdir(args[0]):  # makedirs(exist_ok=True) of a folder: no write
        return str(args[0])
    return None


def _tick(what: str) -> None:
    FAULTS["seen"].append(what)
    if FAULTS["fail_at"] == len(FAULTS["seen"]):
        FAULTS["fail_at"] = None  # one fault per run: the clean-up's own renames must go through
        if len(FAULTS["seen"]) % 2:
            raise OSError(28, f"No space left on device (injected at write {len(FAULTS['seen'])}: {what})")
        raise KeyboardInterrupt(f"injected at write {len(FAULTS['seen'])}: {what}")


def _audit(event: str, args: tuple) -> None:
    root = FAULTS["root"]
    if root is None or event not in ("open", "os.rename", "os.mkdir"):
        return
    path = _is_write(event, args)
    if path is not None and path.startswith(root):
        _tick(f"{event} {path[len(root):]}")


sys.addaudithook(_audit)


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """Arm the injector for writes under tmp_path; yields a function that runs a save, failing at write k."""
    for module, attr in ((transformers.modeling_utils, "safe_save_file"), (sparse_files, "save_file")):
        original = getattr(module, attr)

        def wrapped(tensors, filename, *args, _original=original, **kwargs):
            _tick(f"safetensors {Path(filename).name}")
            return _original(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(module, attr, wrapped)

    def run(save, fail_at: int | None) -> list[str]:
        FAULTS.update(root=str(tmp_path), seen=[], fail_at=fail_at)
        try:
            save()
        finally:
            FAULTS["root"] = None
        return list(FAULTS["seen"])

    yield run
    FAULTS.update(root=None, fail_at=None)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file and folder below ``folder`` with its bytes: any leftover staging folder shows up too."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calibration") / "calib.txt"
    path.write_text("\n\n".join(load_texts("c4")[:6]))
    return path


@pytest.fixture(scope="module")
def pruned(tiny_tokenizer) -> AlphaPruner:
    """Alpha-allocated magnitude pruning: block scores give a chart, zeros make the sparse format compress."""
    pruner = AlphaPruner.from_pretrained(make_tiny_model("llama"), tokenizer=tiny_tokenizer, show_progress=False)
    pruner.prune(AlphaPruningConfig(method="magnitude", sparsity=0.6), show_progress=False)
    return pruner


def reset(target: Path, existing: bool) -> None:
    """No folder, or the user's old folder (two files that a save over it must not lose)."""
    shutil.rmtree(target, ignore_errors=True)
    if existing:
        target.mkdir()
        (target / "config.json").write_text('{"old": true}')
        (target / "weights.bin").write_bytes(b"old weights")


@pytest.mark.parametrize("fmt", ["sparse", "dense"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "over-old-folder"])
def test_save_interrupted_at_every_write_leaves_old_folder_or_nothing(pruned, faults, tmp_path, fmt, existing):
    target = tmp_path / "out"
    reset(target, existing)
    before = tree(tmp_path)

    def save():  # the old folder is not one of ours: "force" replaces its config.json and keeps weights.bin
        pruned.save_pretrained(target, format=fmt, overwrite="force")

    writes = faults(save, None)  # a clean run lists the write points (and must succeed)
    assert {"config.json", "tokenizer.json", "alpha_profile.png", "README.md"} <= set(tree(target))
    assert sum(w.startswith("safetensors") for w in writes) == 1, writes  # sparse: compressed as written
    assert writes[-1].startswith("os.rename"), writes  # the folder swap comes last
    for k in range(1, len(writes) + 1):
        reset(target, existing)
        expected = (OSError, CheckpointError) if k % 2 else KeyboardInterrupt
        with pytest.raises(expected):
            faults(save, k)
        assert tree(tmp_path) == before, f"write {k} ({writes[k - 1]}) left {sorted(tree(tmp_path))}"


# ----------------------------------------------------------------------------------- interrupted pruning

LAYERS = 3


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().view(torch.uint8)


def block_state(model: torch.nn.Module, index: int) -> dict[str, torch.Tensor]:
    return {k: bits(v).clone() for k, v in model.model.layers[index].state_dict().items()}


def run_prune(method: str, calibration_file: Path, tokenizer, interrupt=None):
    """Prune a fresh 3-block Llama; ``interrupt(model)`` may arm a fault. Returns (model, pruner, error)."""
    model = make_tiny_model("llama", seed=1, layers=LAYERS)
    pruner = AlphaPruner.from_pretrained(model, tokenizer=tokenizer, run_analysis=False)
    config = AlphaPruningConfig(method=method, allocation="uniform", sparsity=0.5, nsamples=2, seqlen=16,
                                calibration_dataset=calibration_file)
    if interrupt is not None:
        interrupt(model)
    try:
        pruner.prune(config, show_progress=False)
    except (KeyboardInterrupt, RuntimeError) as error:
        return model, pruner, error
    return model, pruner, None


@pytest.fixture(scope="module")
def reference(calibration_file, tiny_tokenizer):
    """Original and fully pruned blocks of the same model, per method."""
    original = make_tiny_model("llama", seed=1, layers=LAYERS)
    result = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model, pruner, error = run_prune(method, calibration_file, tiny_tokenizer)
        assert error is None and pruner.last_report.completed
        result[method] = [block_state(model, i) for i in range(LAYERS)]
    result["original"] = [block_state(original, i) for i in range(LAYERS)]
    return result


def assert_interrupted_at(k: int, model, pruner, error, reference, method: str) -> None:
    assert error is not None, "the injected interrupt did not propagate"
    for i in range(LAYERS):
        expected = reference[method][i] if i < k else reference["original"][i]
        got = block_state(model, i)
        bad = [name for name in expected if not torch.equal(expected[name], got[name])]
        assert not bad, f"block {i} ({'pruned' if i < k else 'untouched'} expected) differs in {bad}"
    report = pruner.last_report
    assert report.completed is False
    assert [b.index for b in report.blocks] == list(range(k))
    assert {name.split(".")[2] for name in report.layers} == {str(i) for i in range(k)}


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("k", range(LAYERS))
def test_keyboard_interrupt_in_layer_pruning_at_block_k(method, k, reference, calibration_file, tiny_tokenizer,
                                                        monkeypatch):
    cls = get_pruner_class(method)
    original_prune = cls.prune
    calls = []

    def prune(self, weight, sparsity, nm=None):
        calls.append(self.name)
        # the second layer of block k: one new weight of that block is already computed, none written
        if self.name.startswith(f"model.layers.{k}.") and sum(c.startswith(f"model.layers.{k}.") for c in calls) == 2:
            raise KeyboardInterrupt(f"Ctrl-C in {self.name}")
        return original_prune(self, weight, sparsity, nm)

    monkeypatch.setattr(cls, "prune", prune)
    assert_interrupted_at(k, *run_prune(method, calibration_file, tiny_tokenizer), reference, method)


@pytest.mark.parametrize("exception", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("k", [0, 2])
def test_interrupt_during_the_calibration_pass_of_block_k(exception, k, reference, calibration_file,
                                                          tiny_tokenizer):
    """Raised from a forward hook while block k's statistics are collected (Wanda)."""

    def arm(model):
        def hook(module, args, output):
            raise exception(f"stopped in block {k}")

        model.model.layers[k].mlp.down_proj.register_forward_hook(hook)

    assert_interrupted_at(k, *run_prune("wanda", calibration_file, tiny_tokenizer, arm), reference, "wanda")


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test: a process started in the background by a non-interactive
    shell (as CI may be) inherits SIGINT ignored, where a Ctrl-C would never become a KeyboardInterrupt."""
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, outer)


@pytest.mark.parametrize("k", [0, 1])
def test_ctrl_c_while_block_k_is_written_lets_the_block_finish(k, reference, calibration_file, tiny_tokenizer,
                                                                monkeypatch, default_sigint):
    """A real SIGINT arriving between two layer writes is held until block k is written and reported."""
    original_write = matrices_module.write_layer_weight  # what PrunableMatrix.write calls for a Linear
    written = []

    def write(layer, matrix):
        original_write(layer, matrix)
        written.append(layer)
        if len(written) == 7 * k + 2:  # Llama blocks have 7 Linear layers: the 2nd write of block k
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(matrices_module, "write_layer_weight", write)
    handler = signal.getsignal(signal.SIGINT)
    model, pruner, error = run_prune("magnitude", calibration_file, tiny_tokenizer)
    assert isinstance(error, KeyboardInterrupt)
    assert len(written) == 7 * (k + 1)  # the rest of block k was written, nothing of block k + 1
    assert_interrupted_at(k + 1, model, pruner, error, reference, "magnitude")
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back
