"""The interface every within-layer pruning method implements, and the registry that names them."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..plugins import import_plugins

PACKAGE = "optimum_alpha.pruning"
DECORATOR = "register_pruner"


class LayerPruner:
    """Prunes one prunable matrix (a Linear/Conv1D weight or one expert's slice) to a given sparsity.

    The pipeline calls :meth:`add_batch` with the matrix's inputs for every calibration sample (only when
    ``needs_calibration``), then :meth:`prune` once. ``prune`` returns the new (out, in) weight matrix,
    which the pipeline writes back wherever the weight lives (in memory, CPU offload or disk offload).
    ``options`` names the :class:`~optimum_alpha.AlphaPruningConfig` fields passed to the constructor as
    keyword arguments (validated once, by the config).
    """

    needs_calibration: bool = True
    options: tuple[str, ...] = ()

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse values of this pruner's ``options`` it cannot use. Called for every registered pruner when a
        config is made, so a bad value fails early whichever method is chosen."""

    def __init__(self, name: str, **options: object) -> None:
        self.name = name

    @property
    def calibrated(self) -> bool:
        """Whether calibration inputs reached this matrix (an expert no token was routed to has none)."""
        return True

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Accumulate statistics of one batch of inputs, shape (..., in_features)."""

    def prune(self, weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
        """Return the pruned copy of ``weight`` (out, in), same dtype."""
        raise NotImplementedError

    def partial_sums(self, width: int) -> list[torch.Tensor]:
        """This process's statistics as float64 sums over its tokens (zeros when it saw none), so that a
        data-parallel run can sum them over ranks (:mod:`optimum_alpha.distributed`); ``width`` is the
        matrix's number of inputs. A pruner without statistics returns none."""
        return []

    def load_sums(self, sums: list[torch.Tensor]) -> None:
        """Take the sums over ranks of what :meth:`partial_sums` returned."""

    def free(self) -> None:
        """Drop accumulated statistics."""

    def input_hessian(self) -> torch.Tensor | None:
        """The layer's accumulated XᵀX (any positive multiple), for pruners that keep one: GPTQ after this
        pruner reuses it instead of collecting it again."""
        return None

    def fallback(self) -> "LayerPruner":
        """What prunes this matrix when no calibration input reached it (an expert no token was routed to):
        magnitude pruning, found through the registry."""
        return get_pruner_class("magnitude")(self.name)


class StatisticPruner(LayerPruner):
    """A pruner whose calibration is one summable statistic (:meth:`new_statistic`): batching, the sums over
    ranks and freeing belong to the statistic, so a pruner says only which statistic it keeps and how it
    prunes with it."""

    def __init__(self, name: str, **options: object) -> None:
        super().__init__(name)
        self.statistic = self.new_statistic()

    def new_statistic(self) -> Any:
        """An empty statistic with ``add_batch``, ``tokens``, ``partial_sums`` and ``load_sums``."""
        raise NotImplementedError

    @property
    def tokens(self) -> int:
        return self.statistic.tokens

    @property
    def calibrated(self) -> bool:
        return self.statistic.tokens > 0

    def add_batch(self, inputs: torch.Tensor) -> None:
        self.statistic.add_batch(inputs)

    def partial_sums(self, width: int) -> list[torch.Tensor]:
        return self.statistic.partial_sums(width)

    def load_sums(self, sums: list[torch.Tensor]) -> None:
        self.statistic.load_sums(sums)

    def free(self) -> None:
        self.statistic = self.new_statistic()


PRUNERS: dict[str, type[LayerPruner]] = {}


def register_pruner(name: str) -> Callable[[type[LayerPruner]], type[LayerPruner]]:
    def decorator(cls: type[LayerPruner]) -> type[LayerPruner]:
        PRUNERS[name] = cls
        return cls

    return decorator


def pruner_classes() -> tuple[type[LayerPruner], ...]:
    import_plugins(PACKAGE, DECORATOR)
    return tuple(PRUNERS[name] for name in sorted(PRUNERS))


def pruner_names() -> tuple[str, ...]:
    """Every registered layer pruner (importing the plug-in modules first)."""
    import_plugins(PACKAGE, DECORATOR)
    return tuple(sorted(PRUNERS))


def get_pruner_class(name: str) -> type[LayerPruner]:
    import_plugins(PACKAGE, DECORATOR)
    if name not in PRUNERS:
        raise ConfigError(f"Unknown method {name!r}; choose one of {', '.join(sorted(PRUNERS))}.")
    return PRUNERS[name]
