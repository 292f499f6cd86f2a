"""Pruning inside ``from_pretrained``: the ``alpha_pruning`` quantizer plugged into transformers.

``AutoModelForCausalLM.from_pretrained(id, quantization_config=AlphaPruningConfig(...))`` loads the dense
weights as usual, then :class:`AlphaPruningHfQuantizer` runs the whole AlphaPruning pipeline
(:class:`~optimum_alpha.pruner.AlphaPruner`: analysis when the allocation needs it, allocation, block-by-block
pruning) on the loaded model and returns it pruned, the way ``GPTQConfig`` returns a quantized model.

The returned model is a plain dense model with zeros (no quantizer state is left on it, so nothing can prune
it a second time), whose ``save_pretrained`` and ``push_to_hub`` write the compressed ``alpha_sparse``
folder (model card and ``alpha_pruning.json`` included) that loads back through the ``alpha_sparse`` hook.
``model.alpha_pruning_report`` holds the :class:`~optimum_alpha.report.PruningReport`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import types
from pathlib import Path
from typing import Any

from transformers.quantizers.base import HfQuantizer  # not the package: see _registration.py

from ..configuration import QUANT_METHOD, AlphaPruningConfig
from ..errors import CalibrationDataError, CheckpointError
from .hf_registration import register_method

logger = logging.getLogger(__name__)

# Files a previous save may have left that the new one replaces (stale shards would confuse the loader).
_WEIGHT_FILES = ("model.safetensors", "model-0", "model.safetensors.index.json", "pytorch_model")


def _tokenizer_for(config: AlphaPruningConfig, model: Any) -> Any:
    """The calibration tokenizer: the one in the config, one loaded from its name, or the model's own."""
    needs_text = config.needs_calibration_text
    if config.tokenizer is not None and not isinstance(config.tokenizer, (str, os.PathLike)):
        return config.tokenizer
    if not needs_text and config.tokenizer is None:
        return None
    from ..models import load_tokenizer

    source = str(config.tokenizer) if config.tokenizer is not None else model.config._name_or_path
    tokenizer = load_tokenizer(source)
    if tokenizer is None and needs_text:
        raise CalibrationDataError(
            f"Method {config.method!r} needs calibration text, hence a tokenizer, and none could be loaded from "
            f"{source!r}; pass AlphaPruningConfig(tokenizer=...) (a tokenizer or its name) or method='magnitude'."
        )
    return tokenizer


def _forget_quantizer(model: Any) -> None:
    """Leave an ordinary dense model: no quantizer, no quantization_config, not flagged as quantized."""
    from transformers import PreTrainedModel

    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    model.is_quantized = False
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            if hasattr(module.config, "quantization_config"):
                del module.config.quantization_config
            module.config._is_quantized = False


def save_pruned_model(model: Any, save_directory: str | os.PathLike, max_shard_size: str | int = "5GB",
                      format: str | None = None, push_to_hub: bool = False, **kwargs: Any) -> Path:
    """``model.save_pretrained`` of a model pruned on load: the ``alpha_sparse`` folder with card and metadata
    (``format="dense"``: plain safetensors with the zeros in place); a model quantised on load
    (``bits=``) is saved as ``compressed-tensors`` unless ``format`` says otherwise.

    Like transformers' ``save_pretrained`` it writes into ``save_directory`` beside what is already there
    (a tokenizer saved first stays); the model's own files are replaced as a whole.
    """
    from ..quantization.state import recorded_grids
    from .save import save_pruned

    if format is None:
        format = "compressed-tensors" if recorded_grids(model) else "sparse"
    target = Path(save_directory).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.save-", dir=target.parent))
    bound = model.__dict__.pop("save_pretrained", None)  # save_pruned calls the class's own save_pretrained
    try:
        written = save_pruned(model, staging / "model", format=format, max_shard_size=max_shard_size,
                              metadata=getattr(model, "alpha_pruning_metadata", None))
        for old in target.iterdir():
            if old.is_file() and old.name.startswith(_WEIGHT_FILES):
                old.unlink()
        for item in written.iterdir():
            os.replace(item, target / item.name)
    finally:
        if bound is not None:
            model.save_pretrained = bound
        shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        from .hub import push_folder_to_hub

        push_folder_to_hub(target, kwargs.get("repo_id", target.name), private=kwargs.get("private"),
                           token=kwargs.get("token"), commit_message=kwargs.get("commit_message"))
    return target


def push_pruned_model(model: Any, repo_id: str, *, private: bool | None = None, token: str | None = None,
                      commit_message: str | None = None, max_shard_size: str | int = "5GB", **_: Any) -> str:
    """``model.push_to_hub`` of a model pruned on load: save the sparse folder, then upload it as it is
    (the model card keeps its pruning details and names ``repo_id`` in its load snippet)."""
    from .hub import check_push_target, push_folder_to_hub

    check_push_target(repo_id, token=token)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
        return push_folder_to_hub(folder, repo_id, private=private, token=token, commit_message=commit_message)


class AlphaPruningHfQuantizer(HfQuantizer):
    """Prunes the freshly loaded dense model with the :class:`AlphaPruningConfig` passed to ``from_pretrained``."""

    requires_calibration = False  # the checkpoint is dense: pruning happens here, on load

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if self.pre_quantized:
            raise CheckpointError(
                "config.json of this checkpoint says quant_method 'alpha_pruning', which only a "
                "from_pretrained(quantization_config=AlphaPruningConfig(...)) call may use; remove it from config.json"
            )

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        from ..pruner import AlphaPruner

        config: AlphaPruningConfig = self.quantization_config
        _forget_quantizer(model)
        pruner = AlphaPruner(model, _tokenizer_for(config, model), source=model.config._name_or_path)
        _, report = pruner.prune(config)
        model.alpha_pruning_report = report
        model.alpha_pruning_metadata = pruner.metadata()
        model.save_pretrained = types.MethodType(save_pruned_model, model)
        model.push_to_hub = types.MethodType(push_pruned_model, model)
        logger.info("Pruned on load to %.4f sparsity (%s, %s)", report.total_sparsity, config.allocation,
                    config.method)
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


register_method(QUANT_METHOD, AlphaPruningConfig, AlphaPruningHfQuantizer)  # on import: see _registration.py
