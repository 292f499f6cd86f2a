"""Registers ``optimum-cli alpha-prune`` with optimum's PEP 420 command namespace.

optimum imports every ``register_*.py`` module of ``optimum.commands.register`` on each ``optimum-cli``
call, whatever the command. Importing ``optimum_alpha`` pulls in torch and transformers (seconds), so this
module imports nothing from it: the ``alpha-prune`` parser only collects the remaining arguments, and
:meth:`AlphaPruneCommand.run` hands them to the same parser as the ``optimum-alpha`` script.
"""

from __future__ import annotations

from argparse import REMAINDER, SUPPRESS, ArgumentParser, RawDescriptionHelpFormatter

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

PROG = "optimum-cli alpha-prune"
OVERVIEW = """\
Prune LLMs with AlphaPruning: give well-trained blocks (heavy-tailed weight spectra, low alpha) less
sparsity, and prune each layer with Wanda, SparseGPT or magnitude.

commands:
  analyze   measure each block's weight-spectrum metrics (alpha) and preview the allocation
  prune     prune a model and save it, with perplexity before/after (--eval)
  eval      measure perplexity of a dense or pruned model
  push      upload a saved folder to the Hub (retries a failed --push-to-hub)
  export    write a saved model as one GGUF file for llama.cpp (--type q8_0, auto:5.0...)

Run 'optimum-cli alpha-prune <command> --help' for the flags of a command, e.g.
  optimum-cli alpha-prune prune smollm2-135m --sparsity 0.5 --method wanda --allocation alpha --eval
"""


class AlphaPruneCommand(BaseOptimumCLICommand):
    """``optimum-cli alpha-prune {analyze,prune,eval,push,export}``: the commands of the ``optimum-alpha`` script."""

    COMMAND = CommandInfo(
        name="alpha-prune",
        help="Prune LLMs with AlphaPruning (heavy-tailed layer-wise sparsity) + Wanda/SparseGPT/magnitude.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        parser.usage = f"{PROG} {{analyze,prune,eval,push,export}} ARGS [options]"
        parser.description = OVERVIEW
        parser.formatter_class = RawDescriptionHelpFormatter
        parser.add_argument("argv", nargs=REMAINDER, help=SUPPRESS)

    def run(self) -> None:
        from optimum_alpha.commands.cli import main

        raise SystemExit(main(self.args.argv, prog=PROG))


REGISTER_COMMANDS = [AlphaPruneCommand]
