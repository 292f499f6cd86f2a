"""Exception types raised for user mistakes.

They subclass ``ValueError`` so generic callers can catch them, and carry a message that names the
problem and the fix. The CLI prints them as one line (no traceback) and exits non-zero.
"""


class AlphaPruningError(ValueError):
    """Base class of every user-facing error raised by optimum-alpha."""


class ConfigError(AlphaPruningError):
    """An invalid configuration value (sparsity, method, epsilon...)."""


class ModelStructureError(AlphaPruningError):
    """The model's transformer blocks or prunable layers could not be found, or hold invalid weights."""


class CalibrationDataError(AlphaPruningError):
    """A calibration or evaluation source is missing, empty or too short."""


class CheckpointError(AlphaPruningError):
    """A save/load target is invalid (exists, is a file, not writable, bad format)."""


class DistributedRunError(AlphaPruningError):
    """A data-parallel run (torchrun) failed: names the rank that failed and what it was doing."""


class MissingExtraError(AlphaPruningError):
    """A feature needs an optional extra (``pip install 'optimum-alpha[eval]'``) that is not installed."""
