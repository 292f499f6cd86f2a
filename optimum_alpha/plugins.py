"""Plug-in discovery shared by the three registries (layer pruners, allocations, checkpoint writers).

A plug-in is a class in a module of its package, registered by a decorator with its name as a string
literal (``@register_pruner("wanda")``). The command line must list every choice without importing torch
(``--help`` stays instant), so :func:`declared_names` reads the decorators from the source files instead of
importing them; :func:`import_plugins` imports the modules that declare one, which is what fills a registry.
Adding a plug-in is therefore one new file: nothing lists it by hand (a test checks both views agree).
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path


def _package_dir(package: str) -> Path:
    spec = find_spec(package)  # imports the parent packages only, never ``package`` itself
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not a package")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=None)
def _declarations(package: str, decorator: str) -> tuple[tuple[str, str], ...]:
    """(plug-in name, module name) for every ``@decorator("name")`` in the package's own modules."""
    pattern = re.compile(rf"^@{re.escape(decorator)}\(\s*[\"']([\w.-]+)[\"']", re.MULTILINE)
    found = []
    for path in sorted(_package_dir(package).glob("*.py")):
        for name in pattern.findall(path.read_text(encoding="utf-8")):
            found.append((name, f"{package}.{path.stem}"))
    return tuple(found)


def declared_names(package: str, decorator: str) -> tuple[str, ...]:
    """Names of the plug-ins a package declares (sorted), without importing any of them."""
    return tuple(sorted(name for name, _ in _declarations(package, decorator)))


def import_plugins(package: str, decorator: str) -> None:
    """Import every module of ``package`` that declares a plug-in, so that its registry is complete."""
    for module in dict.fromkeys(module for _, module in _declarations(package, decorator)):
        import_module(module)
