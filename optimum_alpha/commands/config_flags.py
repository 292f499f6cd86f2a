"""The pruning flags of the command line, generated from :mod:`optimum_alpha.options`.

Every config field with a flag gets it here, with its help, choices and ``(default: ...)`` taken from the
option, so no help text or choice list is written twice. A flag that is absent leaves its field unset
(``None``), so the values of ``--config FILE.json`` survive unless a flag overrides them.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..options import AUTO, OPTIONS, Option
from .common import positive_int

GROUP_TITLES = {
    "pruning": "what is pruned",
    "allocation": "how sparsity is spread over blocks",
    "calibration": "calibration data",
    "solver": "layer solvers (sparsegpt, alps)",
    "width": "width pruning (--structure width)",
    "quantisation": "integer weights (--bits, with --format compressed-tensors)",
}
RECOVERY_GROUP_TITLES = {
    "objective": "objective",
    "training": "training",
    "lora": "LoRA (--method lora)",
    "data": "training data",
    "checkpoints": "checkpoints and resume",
    "evaluation": "evaluation",
}


def epsilon_value(text: str) -> float | str:
    """--epsilon: a number, or 'auto' for the held-out sweep."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'auto', got {text!r}") from err


_TYPES = {"float": float, "int": int, "count": positive_int, "str": str, "epsilon": epsilon_value, "floats": float}


def _default_text(option: Option) -> str:
    value = option.default
    if isinstance(value, tuple):
        value = " ".join(str(v) for v in value)
    return f" (default: {value})"


def add_option_flag(group: argparse._ActionsContainer, option: Option) -> None:
    """One flag for ``option`` (nothing for options kept off the command line)."""
    flag = option.cli_flag
    if flag is None:
        return
    kwargs: dict[str, Any] = {"dest": option.name, "default": None}
    if option.kind == "flag_on":
        kwargs.update(action="store_const", const=True)
    elif option.kind == "flag_off":
        kwargs.update(action="store_const", const=False)
    elif option.kind == "patterns":
        kwargs.update(action="append", metavar=option.metavar)
    else:
        kwargs.update(type=_TYPES.get(option.kind, str), metavar=option.metavar)
        if option.kind == "floats":
            kwargs["nargs"] = "+"
        choices = option.choice_values()
        if choices:
            kwargs["choices"] = choices
            kwargs.pop("metavar")
    help_text = option.help if option.kind in ("flag_on", "flag_off") else option.help + _default_text(option)
    group.add_argument(flag, help=help_text, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, groups: tuple[str, ...] | None = None,
                     options: tuple[Option, ...] = OPTIONS, titles: dict[str, str] | None = None) -> None:
    """Every option's flag, in argument groups (``groups`` limits which); ``options``/``titles`` name another
    option list (``RECOVERY_OPTIONS`` with ``RECOVERY_GROUP_TITLES`` for ``recover``)."""
    for name, title in (titles or GROUP_TITLES).items():
        if groups is not None and name not in groups:
            continue
        group = parser.add_argument_group(title)
        for option in options:
            if option.group == name:
                add_option_flag(group, option)


def given_values(args: argparse.Namespace, options: tuple[Option, ...] = OPTIONS) -> dict[str, Any]:
    """The config fields the user set with a flag."""
    values = {}
    for option in options:
        value = getattr(args, option.name, None)
        if option.cli_flag is not None and value is not None:
            values[option.name] = list(value) if option.kind == "floats" else value
    return values
