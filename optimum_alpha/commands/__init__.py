"""Command-line interface: ``optimum-cli alpha-prune <command>`` and the standalone ``optimum-alpha``.

Both entry points share one argparse tree built in :mod:`optimum_alpha.commands.cli`. Nothing heavy
(torch, transformers) is imported here or at parser-build time, so ``optimum-cli --help`` stays fast.
"""
