"""Saving, loading and pushing checkpoints in the registered formats (see :mod:`.writers`).

Names load on first use (PEP 562): the plug-in modules import :mod:`.hf_registration` and :mod:`.formats`
while ``import optimum_alpha`` registers them, and must not pull in the writers, the loader and the Hub code.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "AlphaSparseConfig": ".quantizer",
    "AlphaSparseHfQuantizer": ".quantizer",
    "register": ".quantizer",
    "load_pruned": ".load",
    "push_folder_to_hub": ".hub",
    "save_pruned": ".save",
    "check_save_request": ".save",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
