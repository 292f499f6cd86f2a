"""The one way our formats are taught to transformers: :func:`register_method`, and the load-only base.

A leaf (it imports transformers only) because every plug-in module (the ``alpha_sparse`` and ``alpha_width``
loaders, ``alpha_pruning`` prune-on-load) registers itself through it while ``import optimum_alpha`` is
still running; importing the plug-ins from here instead was the circular import that undid the first try.
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.base import HfQuantizer  # not the package: see optimum_alpha/_registration.py


class LoadOnlyQuantizer(HfQuantizer):
    """Base of optimum-alpha's loaders: nothing is quantized, checkpoints only load in a special way."""

    requires_calibration = True  # a dense model cannot be "quantized" to these formats on load

    def param_needs_quantization(self, model: Any, param_name: str, **kwargs: Any) -> bool:
        return False

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def _already_registered(method: str, config_cls: type, quantizer_cls: type) -> bool:
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    return (
        AUTO_QUANTIZATION_CONFIG_MAPPING.get(method) is config_cls
        and AUTO_QUANTIZER_MAPPING.get(method) is quantizer_cls
    )


def register_method(method: str, config_cls: type, quantizer_cls: type) -> None:
    """Register a config and quantizer with transformers under ``quant_method=method``.

    Idempotent: transformers' ``register_*`` helpers refuse a second registration, so we check first.
    """
    if _already_registered(method, config_cls, quantizer_cls):
        return
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        AUTO_QUANTIZER_MAPPING,
        register_quantization_config,
        register_quantizer,
    )

    if method not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(method)(config_cls)
    if method not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(method)(quantizer_cls)
    if not _already_registered(method, config_cls, quantizer_cls):
        raise RuntimeError(
            f"another package registered quant_method {method!r} with transformers; "
            "optimum-alpha cannot load its checkpoints alongside it"
        )


from .._registration import run_pending  # noqa: E402  (last: registrations deferred while this module loaded)

run_pending()
