"""Registers ``optimum-cli alpha-prune`` with optimum's PEP 420 command namespace.

optimum imports every ``register_*.py`` module of ``optimum.commands.register`` on each ``optimum-cli``
call, whatever the command. Importing optimum_alpha's models pulls in torch and transformers (seconds), so this
module imports only its torch-free command list and options: the ``alpha-prune`` parser only collects the
remaining arguments, and
:meth:`AlphaPruneCommand.run` hands them to the same parser as the ``optimum-alpha`` script.
"""

from __future__ import annotations

from argparse import REMAINDER, SUPPRESS, ArgumentParser, RawDescriptionHelpFormatter

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

PROG = "optimum-cli alpha-prune"


def overview() -> str:
    """The plug-in's help, from the same command list and registries as the ``optimum-alpha`` script (both
    torch-free: optimum imports this module on every ``optimum-cli`` call)."""
    from optimum_alpha.commands.cli import SUBCOMMANDS
    from optimum_alpha.options import pruner_names

    commands = "\n".join(f"  {module.NAME:<9} {module.HELP}" for module in SUBCOMMANDS)
    return (
        "Prune LLMs with AlphaPruning: give well-trained blocks (heavy-tailed weight spectra, low alpha) less\n"
        f"sparsity, and prune each layer with {', '.join(pruner_names())}.\n\ncommands:\n{commands}\n\n"
        "Run 'optimum-cli alpha-prune <command> --help' for the flags of a command, e.g.\n"
        "  optimum-cli alpha-prune prune smollm2-135m --sparsity 0.5 --method wanda --allocation alpha --eval\n"
    )


class AlphaPruneCommand(BaseOptimumCLICommand):
    """``optimum-cli alpha-prune {analyze,prune,eval,push}``: the commands of the ``optimum-alpha`` script."""

    COMMAND = CommandInfo(
        name="alpha-prune",
        help="Prune LLMs with AlphaPruning (heavy-tailed layer-wise sparsity) and a pluggable layer pruner.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        from optimum_alpha.commands.cli import SUBCOMMANDS

        parser.usage = f"{PROG} {{{','.join(module.NAME for module in SUBCOMMANDS)}}} ARGS [options]"
        parser.description = overview()
        parser.formatter_class = RawDescriptionHelpFormatter
        parser.add_argument("argv", nargs=REMAINDER, help=SUPPRESS)

    def run(self) -> None:
        from optimum_alpha.commands.cli import main

        raise SystemExit(main(self.args.argv, prog=PROG))


REGISTER_COMMANDS = [AlphaPruneCommand]
