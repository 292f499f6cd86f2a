"""Registers ``optimum-cli alpha-prune`` with optimum's PEP 420 command namespace.

optimum imports every ``register_*.py`` module of ``optimum.commands.register`` at start-up, so this
module only builds argparse parsers; models and torch are imported when a command runs.
"""

from __future__ import annotations

from argparse import ArgumentParser

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

from optimum_alpha.commands.cli import add_commands, run_and_exit


class AlphaPruneCommand(BaseOptimumCLICommand):
    """``optimum-cli alpha-prune {analyze,prune,eval}``: the same commands as ``optimum-alpha``."""

    COMMAND = CommandInfo(
        name="alpha-prune",
        help="Prune LLMs with AlphaPruning (heavy-tailed layer-wise sparsity) + Wanda/SparseGPT/magnitude.",
    )

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        add_commands(parser)

    def run(self) -> None:
        run_and_exit(self.args)


REGISTER_COMMANDS = [AlphaPruneCommand]
