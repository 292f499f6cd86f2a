"""The family table lives in :mod:`optimum_alpha.testing.architectures` (benchmarks import it from there)."""

from optimum_alpha.testing.architectures import *  # noqa: F401,F403
from optimum_alpha.testing.architectures import FAMILIES, VOCAB, WINDOW, build  # noqa: F401
