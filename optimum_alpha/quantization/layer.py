"""The layer pruner that prunes, then quantises (or does both in one sweep), one matrix at a time.

It wraps the configured pruner and keeps its contract (statistics in :meth:`add_batch`, the new weight from
:meth:`prune`, computed before anything is written), so the block pipeline, its interruption guarantees and
its reports stay as they are: the returned weight is the dequantised one, and :attr:`quantized` holds the
grid (scales) that the pipeline records on the model when it writes the block.

* ``sparsegpt`` + ``gptq``: SparseGPT prunes, then GPTQ with its mask fixed on SparseGPT's own Hessian; with
  ``joint_quantisation`` one OBS sweep prunes and rounds (the SparseGPT paper's joint mode).
* ``alps`` + ``gptq``: ALPS prunes, then GPTQ with ALPS's mask fixed, on the XᵀX ALPS already collected.
* ``wanda``/``magnitude`` + ``gptq``: the pruner prunes, GPTQ runs on the masked weights with XᵀX collected
  in the same calibration pass.
* ``rtn``: the pruner prunes, then every weight is rounded to nearest.
"""

from __future__ import annotations

from typing import Any

import torch

from ..options import QUANT_METHODS  # noqa: F401  (re-exported by optimum_alpha.quantization)
from ..pruning import LayerPruner
from ..pruning.gram import GramSum
from .gptq import gptq, joint_sparsegpt
from .spec import QuantizedMatrix, QuantSpec, rtn


class QuantisingPruner(LayerPruner):
    """Prunes with ``inner`` and quantises onto ``spec`` with ``method`` (``gptq`` or ``rtn``)."""

    def __init__(self, inner: LayerPruner, spec: QuantSpec, method: str, percdamp: float = 0.01,
                 blocksize: int = 128, act_order: bool = True, quant_damp: float = 0.1,
                 joint_quantisation: bool = False) -> None:
        super().__init__(inner.name)
        self.inner = inner
        self.spec = spec
        self.method = method
        self.percdamp = float(percdamp)
        self.blocksize = int(blocksize)
        self.act_order = bool(act_order)
        self.quant_damp = float(quant_damp)
        self.joint = bool(joint_quantisation) and getattr(inner, "joint_quantisation", False)
        # GPTQ needs XᵀX; collect it here only when the inner pruner keeps none (Wanda, magnitude).
        self._own_gram = method == "gptq" and type(inner).input_hessian is LayerPruner.input_hessian
        self.statistic = GramSum(factor=2.0) if self._own_gram else None  # Σ 2·xxᵀ in float64
        self.quantized: QuantizedMatrix | None = None

    @property
    def calibrated(self) -> bool:
        return self.inner.calibrated and (self.statistic is None or self.statistic.mean() is not None)

    def add_batch(self, inputs: torch.Tensor) -> None:
        if self.inner.needs_calibration:
            self.inner.add_batch(inputs)
        if self.statistic is not None:
            self.statistic.add_batch(inputs)

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        hessian = self.statistic.mean() if self.statistic is not None else self.inner.input_hessian()
        options = dict(blocksize=self.blocksize, name=self.name)
        if self.method == "gptq" and self.joint:
            # The joint sweep chooses SparseGPT's mask too: its dampening and column order stay SparseGPT's.
            self.quantized = joint_sparsegpt(weight, hessian, self.spec, sparsity, nm, percdamp=self.percdamp,
                                             **options)
        else:
            pruned = self.inner.prune(weight, sparsity, nm) if (sparsity > 0 or nm) else weight
            mask = pruned == 0
            if self.method == "rtn":
                self.quantized = rtn(pruned, self.spec)
                self.quantized.pruned = mask
            else:
                self.quantized = gptq(pruned, hessian, self.spec, mask, percdamp=self.quant_damp,
                                      act_order=self.act_order, **options)
        return self.quantized.weight().to(weight.dtype)

    def free(self) -> None:
        self.inner.free()
        if self.statistic is not None:
            self.statistic = GramSum(factor=2.0)

    def fallback(self) -> LayerPruner:
        """No calibration input: magnitude pruning, then round to nearest (GPTQ would need the inputs)."""
        return QuantisingPruner(self.inner.fallback(), self.spec, "rtn")


def quantising_pruner_class(pruner_cls: type[LayerPruner], widths: dict[str, int], group_size: int | None,
                            method: str) -> type[LayerPruner]:
    """A pruner class with the pipeline's constructor signature ``(name, **options)`` that prunes with
    ``pruner_cls`` and quantises each matrix to its allocated width."""

    class Quantising(QuantisingPruner):
        needs_calibration = pruner_cls.needs_calibration or method == "gptq"
        options = tuple(dict.fromkeys(pruner_cls.options + ("percdamp", "blocksize", "act_order", "quant_damp",
                                                                  "joint_quantisation")))

        def __init__(self, name: str, **options: Any) -> None:
            inner_options = {k: v for k, v in options.items() if k in pruner_cls.options}
            super().__init__(pruner_cls(name, **inner_options), QuantSpec(widths[name], group_size), method,
                             options.get("percdamp", 0.01), options.get("blocksize", 128),
                             options.get("act_order", True), options.get("quant_damp", 0.1),
                             options.get("joint_quantisation", False))

    Quantising.__name__ = f"Quantising{pruner_cls.__name__}"
    return Quantising
