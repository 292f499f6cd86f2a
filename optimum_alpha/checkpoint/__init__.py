"""Saving, loading and pushing checkpoints in the registered formats (see :mod:`.writers`).

Names load on first use (PEP 562): the plug-in modules import :mod:`.hf_registration` and :mod:`.formats`
while ``import optimum_alpha`` registers them, and must not pull in the writers, the loader and the Hub code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AlphaSparseConfig": ".quantizer",
    "AlphaSparseHfQuantizer": ".quantizer",
    "register": ".quantizer",
    "load_pruned": ".load",
    "push_folder_to_hub": ".hub",
    "save_pruned": ".save",
    "check_save_request": ".save",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'optimum_alpha.checkpoint' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


__all__ = sorted(_EXPORTS)
