"""optimum_alpha/options.py is the one source of options: the config, both CLIs and the docs agree with it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from optimum_alpha import options
from optimum_alpha.allocations import allocation_names
from optimum_alpha.checkpoint.writers import writer_names
from optimum_alpha.commands.cli import build_parser
from optimum_alpha.configuration import AlphaPruningConfig
from optimum_alpha.pruning import pruner_names

ROOT = Path(__file__).resolve().parents[1]


def _prune_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["prune"]
    return {action.dest: action for action in sub._actions}


def test_every_config_field_is_an_option_with_the_same_default():
    config_fields = {f.name: f for f in fields(AlphaPruningConfig) if f.init}
    assert set(config_fields) == set(options.BY_NAME)
    defaults = AlphaPruningConfig()
    for name in config_fields:
        assert getattr(defaults, name) == options.default(name), name


def test_every_option_with_a_flag_is_on_the_prune_command():
    actions = _prune_actions()
    for option in options.OPTIONS:
        if option.cli_flag is None:
            assert option.cli_note, f"{option.name} is off the command line without saying why"
            continue
        assert option.name in actions, option.name
        assert option.cli_flag in actions[option.name].option_strings


def test_cli_choices_equal_the_registries():
    actions = _prune_actions()
    assert tuple(actions["method"].choices) == pruner_names()
    assert tuple(actions["allocation"].choices) == allocation_names()
    assert tuple(actions["format"].choices) == writer_names()


def test_torch_free_plugin_scan_equals_the_imported_registries():
    assert options.pruner_names() == pruner_names()
    assert options.allocation_names() == allocation_names()
    assert options.format_names() == writer_names()


def test_flags_reach_the_config_and_a_bad_choice_is_one_line():
    from optimum_alpha.commands import prune as prune_cmd

    args = build_parser().parse_args(["prune", "m", "--structured-damp", "0.05", "--prune-routers",
                                      "--method", "alps", "--alps-max-iter", "7"])
    config = prune_cmd.resolve_config(args)
    assert (config.structured_damp, config.prune_routers, config.method, config.alps_max_iter) == (0.05, True, "alps", 7)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "m", "--method", "random"])


def test_docs_cli_table_is_the_generated_one():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert options.markdown_table() in text, "regenerate with: python -m optimum_alpha.options"


def test_parser_builds_without_torch():
    code = ("import sys; from optimum_alpha.commands.cli import build_parser; build_parser(); "
            "import optimum_alpha.options; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_one_seqlen_rule():
    assert options.resolve_seqlen(None, 131072) == 2048  # never the full context
    assert options.resolve_seqlen(None, 512) == 512
    assert options.resolve_seqlen(None, None) == 2048
    with pytest.raises(ValueError, match="--eval-seqlen 600 exceeds the model's maximum positions"):
        options.resolve_seqlen(600, 512, "--eval-seqlen")
