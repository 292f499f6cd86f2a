"""After plain ``from_pretrained``: a folder of ours whose files lack a weight the model needs is refused.

transformers gives such a weight its random initialisation and only logs ``MISSING``. Our ``alpha_sparse``
loader checks its own modules; this check covers every folder written by optimum-alpha (``alpha_pruning.json``
with ``library_version`` and ``format``), the plain-safetensors ``dense`` format included, and nothing else:
a checkpoint of anyone else loads exactly as transformers loads it.

It wraps transformers' ``log_state_dict_report``, which every load calls once its missing and mismatched keys
are known. The wrapper is installed when transformers' quantizer registry loads (see
:mod:`optimum_alpha._registration`): ``modeling_utils`` imports that registry before it binds the report
function, so it binds the wrapper; when ``modeling_utils`` is already loaded its binding is replaced too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

METADATA_FILE = "alpha_pruning.json"  # checkpoint.target.METADATA_FILE (a leaf module: no torch import here)
_MARK = "_optimum_alpha_checks_our_folders"


def written_by_us(folder: Path) -> dict[str, Any] | None:
    """The ``alpha_pruning.json`` of a local folder written by optimum-alpha, else None."""
    try:
        data = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "library_version" in data and "format" in data else None


def _compressed_modules(folder: Path) -> set[str]:
    """The modules ``config.json`` lists as bitmask-compressed (none for other formats)."""
    try:
        quantization = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("quantization_config")
        modules = quantization.get("compressed_modules") if isinstance(quantization, dict) else None
    except (OSError, ValueError, AttributeError):
        return set()
    return {m for m in modules if isinstance(m, str)} if isinstance(modules, list) else set()


def check_loaded(source: Any, loading_info: Any) -> None:
    """Refuse a model loaded from a folder of ours with weights missing from (or mismatched with) its files."""
    if (not isinstance(source, (str, Path)) or not (Path(source) / "config.json").is_file()  # GGUF folders: no
            or written_by_us(Path(source)) is None):
        return
    # The alpha_sparse loader checks the modules it decompresses itself, naming the cause: leave those to it.
    own = _compressed_modules(Path(source))
    missing = sorted(key for key in getattr(loading_info, "missing_keys", ()) or ()
                     if key not in own and key.removesuffix(".weight") not in own)
    mismatched = sorted(str(entry[0]) for entry in getattr(loading_info, "mismatched_keys", ()) or ())
    if not missing and not mismatched:
        return
    names = missing or mismatched
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    what = "lack" if missing else "hold tensors of the wrong shape for"
    raise CheckpointError(
        f"checkpoint {source} (written by optimum-alpha) is incomplete: its weight files {what} {shown}, which "
        "would keep a random initialisation; save it again with optimum_alpha.save_pruned (or re-download it)"
    )


def _wrap(report: Any) -> Any:
    if getattr(report, _MARK, False):
        return report

    def log_state_dict_report(*args: Any, **kwargs: Any) -> Any:
        result = report(*args, **kwargs)
        if sys.exc_info()[1] is None:  # called from a `finally`: never mask the load's own error
            source = kwargs.get("pretrained_model_name_or_path", args[1] if len(args) > 1 else None)
            check_loaded(source, kwargs.get("loading_info", args[3] if len(args) > 3 else None))
        return result

    setattr(log_state_dict_report, _MARK, True)
    log_state_dict_report.__wrapped__ = report  # type: ignore[attr-defined]
    return log_state_dict_report


def install() -> None:
    """Wrap the report function where transformers looks it up (idempotent)."""
    from transformers.utils import loading_report

    loading_report.log_state_dict_report = _wrap(loading_report.log_state_dict_report)
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    if modeling_utils is not None and hasattr(modeling_utils, "log_state_dict_report"):
        modeling_utils.log_state_dict_report = _wrap(modeling_utils.log_state_dict_report)


install()
