"""The shared argparse tree of both entry points, and the error policy of the command line.

``optimum-alpha`` (console script) and ``optimum-cli alpha-prune`` (optimum plug-in, which forwards its
arguments to :func:`main`) share this parser, so the two always offer the same commands and flags.
User mistakes (:class:`~optimum_alpha.errors.AlphaPruningError`, bad flags) are printed as one line
``error: ...`` on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn, Sequence

from ..interrupts import INTERRUPTED_EXIT_CODE
from ..options import pruner_names
from . import analyze, evaluate, export, prune, push, recover
from .common import add_verbosity_arguments, fail

INTERRUPTED = INTERRUPTED_EXIT_CODE
SUBCOMMANDS = (analyze, prune, evaluate, push, recover, export)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: ...)`` to every flag that lacks it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "default:" in text or "%(default)" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single ``error: ...`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see '{self.prog} --help')")


def add_commands(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``analyze``, ``prune`` and ``eval`` sub-commands to ``parser`` (used by both entry points)."""
    parser.description = (
        "AlphaPruning for Hugging Face LLMs: measure each block's heavy-tailed weight spectrum (ESD),\n"
        "give well-trained blocks (low alpha) less sparsity, and prune each layer with "
        f"{', '.join(pruner_names())}."
    )
    parser.formatter_class = HelpFormatter
    parser.epilog = (
        "MODEL is a Hub id, a local folder, a .gguf file, or 'smollm2-135m' (the embedded SmolLM2-135M).\n"
        "Run '<command> --help' for the flags of each command."
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="{" + ",".join(m.NAME for m in SUBCOMMANDS) + "}",
        parser_class=OneLineErrorParser
    )
    subparsers.required = True
    for module in SUBCOMMANDS:
        sub = subparsers.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=HelpFormatter,
        )
        module.add_arguments(sub)
        add_verbosity_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def build_parser(prog: str = "optimum-alpha") -> argparse.ArgumentParser:
    """The parser of the standalone ``optimum-alpha`` console script."""
    return add_commands(OneLineErrorParser(prog=prog))


class _StderrLines(logging.Handler):
    """Library log records as ``warning: ...`` lines on whatever ``sys.stderr`` is when they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")


def configure_output(quiet: bool, verbose: bool) -> None:
    """-q: results and errors only; default: our warnings as ``warning: ...`` lines; -v: our info messages too."""
    logger = logging.getLogger("optimum_alpha")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _StderrLines)] + [_StderrLines()]
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    if quiet:  # read when tqdm / transformers / huggingface_hub are imported, which the parser has not done
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; user errors become one line on stderr and exit code 2."""
    from ..errors import AlphaPruningError

    configure_output(getattr(args, "quiet", False), getattr(args, "verbose", False))
    from ..interrupts import exit_on_interrupt_while_starting

    with exit_on_interrupt_while_starting():  # seconds of torch/transformers imports: Ctrl-C = exit 130 at once
        from .. import pruner  # noqa: F401  (the import every command but --help pays; --help never gets here)
    from .. import distributed

    try:
        if distributed.quiet_other_ranks():  # under torchrun: makes the process group; rank 0 prints
            args.quiet = True  # no stage headers either
        return int(args.handler(args) or 0)
    except AlphaPruningError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted", code=INTERRUPTED)
    finally:
        distributed.shutdown()


def main(argv: Sequence[str] | None = None, prog: str = "optimum-alpha") -> int:
    """Entry point of ``optimum-alpha`` and, with ``prog="optimum-cli alpha-prune"``, of the optimum plug-in."""
    from ..interrupts import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # `timeout`, `docker stop`, SLURM: stop like a Ctrl-C
            return run_command(build_parser(prog).parse_args(argv))
    except KeyboardInterrupt:
        fail("interrupted", code=INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
