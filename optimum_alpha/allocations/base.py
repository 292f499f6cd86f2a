"""The contract every allocation implements, and the registry that names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

from ..errors import ConfigError
from ..plugins import import_plugins

if TYPE_CHECKING:
    from ..calibration import BlockInputs
    from ..esd import ESDReport
    from ..matrices import BlockWeights

PACKAGE = "optimum_alpha.allocations"
DECORATOR = "register_allocation"


@dataclass
class AllocationInputs:
    """What an allocation may read. The costly parts (spectra, calibration inputs) are callables, so only
    the allocations that use them pay for them."""

    config: Any  # AlphaPruningConfig
    blocks: Sequence["BlockWeights"]  # the prunable matrices of every block
    block_modules: Sequence[Any]  # the blocks themselves (for allocations that run them)
    max_sparsity: float  # the cap of every unit (below config.max_sparsity under mixed N:M)
    show_progress: bool
    spectra: Callable[[], "ESDReport"]
    calibration: Callable[[], "BlockInputs"]

    @property
    def matrices(self) -> list:
        return [matrix for block in self.blocks for matrix in block.matrices]


@dataclass
class Allocated:
    """An allocation's answer: a target sparsity per matrix, and per block the score that drove it."""

    per_matrix: dict[str, float]
    block_scores: list[float | None]


class Allocation:
    """Spreads ``config.sparsity`` over units so that the parameter-weighted total is exact.

    Class attributes declare what the pipeline must provide: ``needs_calibration`` (calibration text, hence a
    tokenizer), ``needs_esd`` (the spectra) and ``block_only`` (refuses ``granularity="matrix"``).
    :meth:`score_name` names the block score in tables and on the model card.
    """

    name: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False
    needs_esd: ClassVar[bool] = False
    block_only: ClassVar[bool] = False
    # (option, grid option) that "auto" searches on held-out windows (alpha's ε, ATP's β), or None
    searched_option: ClassVar[tuple[str, str] | None] = None

    @classmethod
    def score_name(cls, config: Any) -> str:
        return "score"

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Validate the values of the config fields this allocation reads. Called for every registered
        allocation when a config is made, so a bad value fails early whichever allocation is chosen."""

    @classmethod
    def check_chosen(cls, config: Any) -> None:
        """Refuse the settings this allocation cannot work with, once it is the chosen one."""
        if cls.block_only and config.granularity != "block":
            raise ConfigError(f"The {cls.name!r} allocation works per block; use granularity='block'.")

    def allocate(self, inputs: AllocationInputs) -> Allocated:
        raise NotImplementedError


_ALLOCATIONS: dict[str, type[Allocation]] = {}


def register_allocation(name: str) -> Callable[[type[Allocation]], type[Allocation]]:
    def decorator(cls: type[Allocation]) -> type[Allocation]:
        cls.name = name
        _ALLOCATIONS[name] = cls
        return cls

    return decorator


def allocation_classes() -> tuple[type[Allocation], ...]:
    import_plugins(PACKAGE, DECORATOR)
    return tuple(_ALLOCATIONS[name] for name in sorted(_ALLOCATIONS))


def allocation_names() -> tuple[str, ...]:
    """Every registered allocation (importing the plug-in modules first)."""
    import_plugins(PACKAGE, DECORATOR)
    return tuple(sorted(_ALLOCATIONS))


def get_allocation(name: str) -> type[Allocation]:
    import_plugins(PACKAGE, DECORATOR)
    if name not in _ALLOCATIONS:
        raise ConfigError(f"Unknown allocation {name!r}; choose one of {', '.join(sorted(_ALLOCATIONS))}.")
    return _ALLOCATIONS[name]


def per_unit_to_matrices(inputs: AllocationInputs, sparsities: Sequence[float]) -> dict[str, float]:
    """Spread one sparsity per block (``granularity="block"``) onto that block's matrices."""
    return {matrix.name: float(sparsities[i]) for i, block in enumerate(inputs.blocks) for matrix in block.matrices}
