"""``export``: write a saved model (ours or any Hugging Face folder) as one GGUF file for llama.cpp."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "export a saved (pruned or dense) model to GGUF for llama.cpp"
TYPES = "f16, bf16, q8_0, q5_0, q4_0, q5_1, q4_1 or auto:B"
DESCRIPTION = (
    "Write FOLDER (a folder saved by prune/save_pretrained, a plain Hugging Face folder, a Hub id, a .gguf or\n"
    "'smollm2-135m') as one .gguf file with its tokenizer, for llama.cpp. Width-pruned folders whose blocks\n"
    "differ are written with per-layer head counts and FFN lengths (llama.cpp architecture 'deci').\n\n"
    "--type auto:B chooses q4_0/q5_0/q8_0 per block matrix from its spectrum (lower alpha -> wider type) for an\n"
    "average of B bits per weight over the block matrices (q4_0 4.5, q5_0 5.5, q8_0 8.5).\n\n"
    "example:\n  optimum-cli alpha-prune export outputs/smollm2-width-30 --format gguf --type q8_0 "
    "--output smollm2-w30.gguf"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="FOLDER", help="saved folder, Hub id, .gguf file or 'smollm2-135m'")
    parser.add_argument("--format", default="gguf", choices=("gguf",), help="output format")
    parser.add_argument("--type", default="q8_0", metavar="TYPE", dest="gguf_type",
                        help=f"tensor type of the block matrices: {TYPES}")
    parser.add_argument("--output", required=True, type=Path, metavar="FILE.gguf", help="the file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--force-type", action="store_true",
                        help="allow q4_1/q5_1 on a pruned model although they round its zeros away")


def run(args: argparse.Namespace) -> int:
    from ..gguf import parse_type
    from ..gguf.export import export_to_gguf

    parse_type(args.gguf_type)  # a bad --type is refused before anything loads
    summary = export_to_gguf(args.source, args.output, gguf_type=args.gguf_type, force=args.force_type,
                             overwrite=args.overwrite, show_progress=not getattr(args, "quiet", False))
    print(f"wrote {summary.describe()}")
    for name in summary.fallbacks:
        print(f"  {name}: rows do not split into blocks of 32, written as f16")
    return 0
