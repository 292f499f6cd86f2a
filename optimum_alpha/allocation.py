"""The allocation arithmetic: turn one score per unit (block or matrix) into one sparsity per unit.

``alpha`` is the AlphaPruning mapping (paper eq. 4): scores are mapped linearly onto ratios in
[1 - ε, 1 + ε] (low score, i.e. heavy-tailed, gets the low ratio) and scaled by η so that the
parameter-weighted mean sparsity equals the target exactly. Unlike the reference code, the result is
bounded to [0, max_sparsity]: units pushed past the bound are pinned to it and η is solved for the
others, so the total stays exact (without the bound, SmolLM2 at 70 % with ε = 0.3 gets a block at 102 %).
"""

from __future__ import annotations

import math
from typing import Sequence

from .errors import ConfigError

def check_sparsity(sparsity: float, max_sparsity: float = 0.99) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}; e.g. 0.7 for 70 % of weights removed.")
    if not 0.0 < max_sparsity <= 1.0:
        raise ConfigError(f"max_sparsity must be in (0, 1], got {max_sparsity}.")
    if sparsity > max_sparsity:
        raise ConfigError(
            f"Target sparsity {sparsity} exceeds max_sparsity {max_sparsity}: no allocation can meet it. "
            "Raise max_sparsity or lower the target."
        )


def check_epsilon(epsilon: float) -> None:
    if not 0.0 <= epsilon < 1.0:
        raise ConfigError(
            f"epsilon must be in [0, 1), got {epsilon}: the ratios 1 ± ε must stay positive (paper default 0.3)."
        )


def alpha_ratios(scores: Sequence[float], epsilon: float) -> list[float]:
    """Paper eq. 4 before η: (q - q_min)/(q_max - q_min) · (s2 - s1) + s1 with s1 = 1 - ε, s2 = 1 + ε."""
    check_epsilon(epsilon)
    q_min, q_max = min(scores), max(scores)
    if q_max == q_min:
        return [1.0] * len(scores)
    s1, s2 = 1.0 - epsilon, 1.0 + epsilon
    return [(q - q_min) / (q_max - q_min) * (s2 - s1) + s1 for q in scores]


def fit_to_budget(
    ratios: Sequence[float],
    param_counts: Sequence[int],
    sparsity: float,
    max_sparsity: float = 0.99,
    min_sparsity: float = 0.0,
    mode: str = "scale",
) -> list[float]:
    """Per-unit sparsities sᵢ = clip(level(x, rᵢ), min_sparsity, max_sparsity) with Σ dᵢ·sᵢ = S·Σ dᵢ exactly.

    ``mode="scale"``: level = x·rᵢ (AlphaPruning's η, ratios must be non-negative); ``mode="shift"``:
    level = rᵢ + x (OWL's values moved by a common offset). Units past a bound are pinned to it and the others
    share the rest: the spent budget is piecewise linear and non-decreasing in x, with breakpoints where a unit
    meets a bound. The segment holding the target is found, and there the equation is linear in x.
    """
    n = len(ratios)
    if n != len(param_counts):
        raise ConfigError(f"Got {n} scores but {len(param_counts)} parameter counts; give one of each per unit.")
    if any(d <= 0 for d in param_counts):
        raise ConfigError("Every unit needs a positive parameter count.")
    if mode == "scale":
        if any(not r >= 0 for r in ratios):
            raise ConfigError("Allocation ratios must be non-negative (they are scaled by a common factor η).")
        if not any(r > 0 for r in ratios):
            return [float(sparsity)] * n
        # (a ratio so small that bound / ratio overflows cannot reach its bound: no breakpoint)
        breakpoints = sorted({b / r for r in ratios if r > 0 for b in (min_sparsity, max_sparsity)
                              if math.isfinite(b / r)} | {0.0})
    elif mode == "shift":
        breakpoints = sorted({b - r for r in ratios for b in (min_sparsity, max_sparsity)})
    else:
        raise ConfigError(f"Unknown fit mode {mode!r}; use 'scale' or 'shift'.")

    def level(x: float, r: float) -> float:
        return x * r if mode == "scale" else r + x

    def clipped(x: float) -> list[float]:
        return [min(max(level(x, r), min_sparsity), max_sparsity) for r in ratios]

    def spent(x: float) -> float:
        return sum(d * s for d, s in zip(param_counts, clipped(x)))

    total = float(sum(param_counts))
    budget = sparsity * total
    tolerance = 1e-12 * total  # round-off of the sums
    if not spent(breakpoints[0]) - tolerance <= budget <= spent(breakpoints[-1]) + tolerance:
        raise ConfigError(
            f"Target {sparsity} cannot be met with every unit in [{min_sparsity}, {max_sparsity}]; "
            "raise max_sparsity or lower the target."
        )
    high = next((p for p in breakpoints if spent(p) >= budget), breakpoints[-1])
    low = max((p for p in breakpoints if p < high), default=high)
    # Between two breakpoints each unit is either pinned or free (level strictly inside the bounds), and
    # Σ pinned + Σ_free d·level(x, r) = budget is linear in x.
    middle = (low + high) / 2
    pinned = sum(d * s for r, d, s in zip(ratios, param_counts, clipped(middle)) if s != level(middle, r))
    free = [(r, d) for r, d, s in zip(ratios, param_counts, clipped(middle)) if s == level(middle, r)]
    if not free:
        return clipped(high)
    if mode == "scale":
        x = (budget - pinned) / sum(d * r for r, d in free)
    else:
        x = (budget - pinned - sum(d * r for r, d in free)) / sum(d for _, d in free)
    return clipped(x)


def alpha_allocation(
    scores: Sequence[float],
    param_counts: Sequence[int],
    sparsity: float,
    epsilon: float = 0.3,
    max_sparsity: float = 0.99,
) -> list[float]:
    """AlphaPruning: one sparsity per unit, parameter-weighted mean exactly ``sparsity`` (to float precision)."""
    check_sparsity(sparsity, max_sparsity)
    if len(scores) == 0:
        raise ConfigError("Nothing to allocate: no units (blocks or matrices) were given.")
    return fit_to_budget(alpha_ratios(scores, epsilon), param_counts, sparsity, max_sparsity)
