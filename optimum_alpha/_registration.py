"""Register our two transformers quantizers (``alpha_sparse`` loading, ``alpha_pruning`` prune-on-load) without
making ``import optimum_alpha`` import torch and transformers.

``import optimum_alpha`` must be enough for a later plain ``AutoModelForCausalLM.from_pretrained`` to know our
formats, yet the command line (which imports this package) must answer ``--help`` instantly. So registration
happens when transformers' quantizer registry, ``transformers.quantizers.auto``, is imported: at once if it
already is, otherwise through a one-shot import hook that runs right after that module has executed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from importlib import import_module
from types import ModuleType
from typing import Any

REGISTRY = "transformers.quantizers.auto"
# Each quantizer registers its quant_method through checkpoint/hf_registration.register_method when imported;
# load_check wraps transformers' loading report (it must be in place before modeling_utils binds it).
PLUGIN_MODULES = (
    "optimum_alpha.checkpoint.quantizer",  # alpha_sparse: bitmask checkpoints
    "optimum_alpha.structured.checkpoint",  # alpha_width: blocks of different widths
    "optimum_alpha.checkpoint.prune_on_load",  # alpha_pruning: prune inside from_pretrained
    "optimum_alpha.checkpoint.load_check",  # a folder of ours with a missing weight is refused after loading
)


HELPER = "optimum_alpha.checkpoint.hf_registration"
_pending = False


def _helper_initialising() -> bool:
    module = sys.modules.get(HELPER)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def run_pending() -> None:
    """Called by the registration helper once it is whole: the registrations its own import deferred."""
    global _pending
    if _pending:
        _pending = False
        _import_plugins()


def register_all() -> None:
    """Register our quantizers with transformers (idempotent).

    Each quantizer module registers itself when its import completes, so importing them is all it takes.
    When one of them is what triggered the registry import (it imports ``transformers.quantizers.base``),
    ``import_module`` hands back the half-initialised module and the module registers itself once done.
    """
    global _pending
    if _helper_initialising():  # its import of transformers triggered us: the plug-ins need it whole first
        _pending = True
        return
    _import_plugins()


def _import_plugins() -> None:
    for module in PLUGIN_MODULES:
        import_module(module)


class _RegisterAfterLoad(importlib.abc.Loader):
    """Wraps the registry module's loader: executes it, then registers ours."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        register_all()


class _RegistryWatcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when the registry module is looked up, hands back its spec with our loader."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != REGISTRY:
            return None
        sys.meta_path.remove(self)  # one shot, and lets the real finders answer the lookup below
        spec = None
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoad(spec.loader)
        return spec


def install() -> None:
    """Register now if transformers' registry is loaded, else as soon as it is."""
    if REGISTRY in sys.modules:
        register_all()
    elif not any(isinstance(finder, _RegistryWatcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegistryWatcher())
