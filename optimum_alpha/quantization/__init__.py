"""Weight-only integer quantisation after (or jointly with) pruning, keeping every pruned zero.

``spec``: grids, scales and rounding (through compressed-tensors); ``gptq``: mask-preserving GPTQ and
SparseGPT's joint mode; ``bits``: bit widths per block from the spectra under an average budget;
``layer``: the layer pruner that prunes then quantises; ``state``: the grids a model carries;
``plan``: the checks and the per-matrix widths of a run.
"""

from .bits import BIT_ALLOCATIONS, allocate_bits
from .layer import QUANT_METHODS, QuantisingPruner
from .spec import QuantizedMatrix, QuantSpec, rtn
from .state import recorded_grids

__all__ = ["BIT_ALLOCATIONS", "QUANT_METHODS", "QuantSpec", "QuantisingPruner", "QuantizedMatrix",
           "allocate_bits", "recorded_grids", "rtn"]
