"""Empirical spectral density (ESD) analysis of weight matrices, after Heavy-Tailed Self-Regularization.

For a weight W (m x n) the ESD is the set of eigenvalues of the Gram matrix WᵀW, i.e. the squared singular
values of W. Metrics (AlphaPruning paper, section 3.2, 4.2 and appendix C), with λ sorted ascending:

* ``alpha_hill`` (PL_Alpha_Hill): Hill estimator of the power-law exponent of the ESD tail,
  α = 1 + n / Σ_{j≥i} ln(λ_j / λ_i) for the tail λ_i..λ_N (n = N - i + 1 values), with xmin = λ_i chosen
  by "fix-finger": the candidate with the smallest Kolmogorov-Smirnov distance
  D = max_t |1 - (λ_{i+t}/λ_i)^(1-α) - t/n| among those near the ESD peak (see :func:`hill_fit`).
* ``alpha_hat``: α · log10(λ_max) (Martin et al., 2021).
* ``stable_rank``: ‖W‖_F² / ‖W‖_2² = Σλ / λ_max.
* ``entropy``: spectral entropy -1/ln(R) · Σ p_i ln p_i with p_i = λ_i / Σλ and R the numerical rank.
* ``frobenius_norm_sq``: ‖W‖_F² = Σλ, the *squared* Frobenius norm (what the paper's "FrobeniusNorm" computes).
* ``spectral_norm_sq``: ‖W‖_2² = λ_max, the *squared* spectral norm (the paper's "SpectralNorm").
  The names before 0.2, ``frobenius_norm`` and ``spectral_norm``, are accepted everywhere as aliases.

Low alpha means a heavier tail, i.e. a better-trained matrix, which AlphaPruning prunes less.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from .distributed import current as current_parallel
from .errors import ConfigError, ModelStructureError
from .esd_sampling import FarmsOptions, check_esd_sampling, farms_eigenvalues, mid_hill_fit
from .matrices import PrunableMatrix, model_weights
from .model_utils import check_finite
# The metric names (and the old names of the squared norms, still accepted) live in the torch-free options.
from .options import BLOCK_SCORES, METRIC_ALIASES, METRICS, canonical_metric  # noqa: F401



FixFinger = Literal["reference", "strict"]
HISTOGRAM_BINS = 100
# An eigenvalue of a float64 Gram matrix is exact to about N·eps·λ_max; below ZERO_EIGENVALUE_ULPS times
# that it is a numerical zero and is left out of the fit. (A fixed 1e-10·λ_max threshold dropped genuine
# small eigenvalues of SmolLM2 matrices, moving the ESD peak and so the fitted alpha.)
ZERO_EIGENVALUE_ULPS = 10.0
# Bounds the (candidates x eigenvalues) KS matrix to about 32 MiB of float64 at a time.
_KS_CHUNK_ELEMENTS = 4 * 1024 * 1024


def matrix_eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of WᵀW (= squared singular values of W), ascending, float64, clamped at 0.

    Uses ``eigvalsh`` of the smaller Gram matrix (min(m, n)² instead of a full SVD); float64 keeps the small
    end of the spectrum accurate, where the Hill fit starts (float32 Gram eigenvalues go negative there).
    """
    if weight.ndim != 2:
        raise ModelStructureError(f"Expected a 2-D weight matrix, got shape {tuple(weight.shape)}.")
    w = weight.detach().to(torch.float64)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.linalg.eigvalsh(gram).clamp_(min=0.0)


@dataclass
class HillFit:
    """Result of the fix-finger Hill fit: exponent, chosen xmin, its KS distance and the tail size."""

    alpha: float
    xmin: float
    ks_distance: float
    n_tail: int


def nonzero_eigenvalues(eigenvalues: torch.Tensor, name: str = "matrix") -> torch.Tensor:
    """The eigenvalues above float64 round-off (see ZERO_EIGENVALUE_ULPS); errors if fewer than 3 remain."""
    if not torch.isfinite(eigenvalues).all():
        raise ModelStructureError(f"The spectrum of {name} contains NaN/Inf; the weight is not finite.")
    lam_max = float(eigenvalues.max()) if eigenvalues.numel() else 0.0
    threshold = lam_max * eigenvalues.numel() * ZERO_EIGENVALUE_ULPS * torch.finfo(torch.float64).eps
    nz = eigenvalues[eigenvalues > threshold] if lam_max > 0 else eigenvalues[:0]
    if nz.numel() < 3:
        raise ModelStructureError(
            f"The spectrum of {name} has {nz.numel()} non-zero eigenvalue(s); at least 3 are needed for a "
            "power-law fit. The matrix is all zero or of rank < 3: exclude it or analyse the dense model."
        )
    return nz


def xmin_window(peak: float, fix_finger: FixFinger) -> tuple[float, float]:
    """The inclusive [lower, upper] range of candidate xmins around the ESD peak p.

    ``"strict"`` is the paper's stated window [0.95·p, 1.5·p]. ``"reference"`` is what the authors'
    ``net_esd_estimator`` computes: its lower bound is log10(0.95·p), compared with *raw* eigenvalues (a unit
    slip), so it only binds when 0.95·p > 1 and is then far below 0.95·p; for p ≤ 1/0.95 it is negative and
    every eigenvalue up to 1.5·p is a candidate. Reproduced on purpose, so that alphas match the authors'.
    """
    if fix_finger == "strict":
        return 0.95 * peak, 1.5 * peak
    return math.log10(0.95 * peak), 1.5 * peak


def hill_fit(eigenvalues: torch.Tensor, fix_finger: FixFinger = "reference", name: str = "matrix") -> HillFit:
    """Fix-finger PL_Alpha_Hill fit of an ascending spectrum.

    The ESD peak p is the left edge of the fullest of 100 equal bins of log10 λ. Candidate xmins are the
    non-zero λ_i inside :func:`xmin_window` (authors' code with ``"reference"``, the paper's text with
    ``"strict"``), the largest eigenvalue excluded. The candidate with the smallest KS distance wins (the first
    one on a tie, as the authors' ``argmin``); all are evaluated at once with suffix sums (no Python loop).
    """
    if fix_finger not in ("reference", "strict"):
        raise ConfigError(f"Unknown fix_finger mode {fix_finger!r}; use 'reference' or 'strict'.")
    lam = nonzero_eigenvalues(torch.sort(eigenvalues.to(torch.float64)).values, name)
    n_total = lam.numel()
    log_lam = torch.log(lam)
    log10_lam = log_lam / math.log(10.0)
    lo, hi = float(log10_lam[0]), float(log10_lam[-1])
    if hi > lo:
        counts = torch.histc(log10_lam, bins=HISTOGRAM_BINS, min=lo, max=hi)
        peak = 10.0 ** (lo + int(torch.argmax(counts)) * (hi - lo) / HISTOGRAM_BINS)
    else:
        peak = float(lam[0])
    lower, upper = xmin_window(peak, fix_finger)
    candidates = torch.nonzero((lam <= upper) & (lam >= lower)).flatten()
    candidates = candidates[candidates <= n_total - 2]  # a tail needs at least 2 values
    if candidates.numel() == 0:
        candidates = torch.tensor([0], device=lam.device)

    # Suffix sums of ln λ give every candidate's Hill denominator in O(N).
    suffix = torch.flip(torch.cumsum(torch.flip(log_lam, [0]), 0), [0])
    tail_sizes = (n_total - candidates).to(torch.float64)
    denominators = suffix[candidates] - tail_sizes * log_lam[candidates]
    alphas = 1.0 + tail_sizes / denominators.clamp(min=torch.finfo(torch.float64).tiny)

    # KS distance of each candidate's fitted Pareto CDF against its empirical tail CDF.
    positions = torch.arange(n_total, device=lam.device)
    ks = torch.empty_like(alphas)
    chunk = max(1, _KS_CHUNK_ELEMENTS // n_total)
    for start in range(0, candidates.numel(), chunk):
        idx = candidates[start : start + chunk]
        t = positions[None, :] - idx[:, None]  # offset inside each tail
        valid = t >= 0
        n_tail = (n_total - idx).to(torch.float64)[:, None]
        a = alphas[start : start + chunk, None]
        log_ratio = (log_lam[None, :] - log_lam[idx][:, None]).clamp(min=0.0)
        fitted_cdf = 1.0 - torch.exp((1.0 - a) * log_ratio)
        gap = (fitted_cdf - t.to(torch.float64) / n_tail).abs().masked_fill(~valid, 0.0)
        ks[start : start + chunk] = gap.max(dim=1).values
    best = int(torch.argmin(ks))
    i = int(candidates[best])
    return HillFit(alpha=float(alphas[best]), xmin=float(lam[i]), ks_distance=float(ks[best]), n_tail=n_total - i)


def farms_hill_fit(eigenvalues: torch.Tensor, name: str = "matrix") -> HillFit:
    """FARMS's Hill fit of a pooled spectrum: xmin at the middle of its non-zero eigenvalues (``xmin_mid``)."""
    lam = nonzero_eigenvalues(torch.sort(eigenvalues.to(torch.float64)).values, name)
    alpha, xmin, ks, n_tail = mid_hill_fit(lam)
    return HillFit(alpha=alpha, xmin=xmin, ks_distance=ks, n_tail=n_tail)


def spectrum_metrics(eigenvalues: torch.Tensor, fix_finger: FixFinger = "reference", name: str = "matrix",
                     fit: HillFit | None = None):
    """All metrics of one spectrum, plus its Hill fit (for xmin / KS reporting); ``fit`` replaces the
    fix-finger fit (FARMS fits its pooled spectrum with :func:`farms_hill_fit`)."""
    fit = fit if fit is not None else hill_fit(eigenvalues, fix_finger=fix_finger, name=name)
    lam = nonzero_eigenvalues(eigenvalues.to(torch.float64), name)
    total = float(lam.sum())
    lam_max = float(lam.max())
    p = lam / total
    entropy = float(-(p * torch.log(p)).sum()) / math.log(lam.numel())
    metrics = {
        "alpha_hill": fit.alpha,
        "alpha_hat": fit.alpha * math.log10(lam_max),
        "stable_rank": total / lam_max,
        "entropy": entropy,
        "frobenius_norm_sq": total,
        "spectral_norm_sq": lam_max,
    }
    return metrics, fit


@dataclass
class MatrixSpectrum:
    """ESD summary of one prunable weight matrix."""

    block_index: int
    name: str
    shape: tuple[int, int]
    n_eigenvalues: int
    xmin: float
    ks_distance: float
    n_tail: int
    metrics: dict[str, float]

    @property
    def num_params(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class BlockSpectrum:
    """Per-block mean of the matrix metrics (the paper's allocation unit)."""

    index: int
    num_params: int
    metrics: dict[str, float]


@dataclass
class ESDReport:
    """The analysis of a whole model; JSON round-trips so that it can be cached and reported."""

    matrices: list[MatrixSpectrum]
    blocks: list[BlockSpectrum] = field(default_factory=list)
    fix_finger: str = "reference"
    blocks_path: str = ""
    block_score: str = "mean"
    esd_sampling: str = "full"
    farms: dict = field(default_factory=dict)  # FarmsOptions of a FARMS analysis

    def __post_init__(self) -> None:
        if not self.blocks:
            self.blocks = aggregate_blocks(self.matrices, self.block_score)

    def scores(self, metric: str = "alpha_hill", granularity: str = "block") -> tuple[list[float], list[int]]:
        """(score, parameter count) per allocation unit: per block (the paper's default) or per matrix."""
        if granularity == "block":
            units: Iterable = self.blocks
        elif granularity == "matrix":
            units = self.matrices
        else:
            raise ConfigError(f"Unknown granularity {granularity!r}; use 'block' or 'matrix'.")
        units = list(units)
        metric = canonical_metric(metric)
        if units and metric not in units[0].metrics:
            raise ConfigError(
                f"Metric {metric!r} was not computed; available: {', '.join(units[0].metrics)}. "
                f"Choose one of {', '.join(METRICS)}."
            )
        return [u.metrics[metric] for u in units], [u.num_params for u in units]

    def to_dict(self) -> dict:
        return {
            "fix_finger": self.fix_finger,
            "blocks_path": self.blocks_path,
            "block_score": self.block_score,
            "esd_sampling": self.esd_sampling,
            "farms": dict(self.farms),
            "matrices": [asdict(m) for m in self.matrices],
            "blocks": [asdict(b) for b in self.blocks],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "ESDReport":
        def renamed(metrics: dict) -> dict:  # esd.json written before the squared norms were renamed
            return {canonical_metric(k): v for k, v in metrics.items()}

        matrices = [MatrixSpectrum(**{**m, "shape": tuple(m["shape"]), "metrics": renamed(m["metrics"])})
                    for m in data["matrices"]]
        blocks = [BlockSpectrum(**{**b, "metrics": renamed(b["metrics"])}) for b in data.get("blocks", [])]
        return cls(matrices, blocks, data.get("fix_finger", "reference"), data.get("blocks_path", ""),
                   data.get("block_score", "mean"), data.get("esd_sampling", "full"), data.get("farms", {}))

    def matches(self, fix_finger: str, block_score: str, esd_sampling: str = "full",
                farms: FarmsOptions | None = None) -> bool:
        """Whether this analysis was made with these settings (else it must be re-run)."""
        wanted_farms = (farms or FarmsOptions()).to_dict() if esd_sampling == "farms" else {}
        return (self.fix_finger, self.block_score, self.esd_sampling, dict(self.farms)) == (
            fix_finger, block_score, esd_sampling, wanted_farms)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "ESDReport":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def aggregate_blocks(matrices: list[MatrixSpectrum], how: str = "mean") -> list[BlockSpectrum]:
    """Each block's score from its matrices, in block order: the plain ``mean`` over matrices (the paper's
    choice; in an MoE block every expert matrix counts once) or the parameter-``weighted`` mean."""
    if how not in BLOCK_SCORES:
        raise ConfigError(f"Unknown block_score {how!r}; use 'mean' or 'weighted'.")
    grouped: dict[int, list[MatrixSpectrum]] = {}
    for m in matrices:
        grouped.setdefault(m.block_index, []).append(m)
    blocks = []
    for index in sorted(grouped):
        members = grouped[index]
        weights = [m.num_params if how == "weighted" else 1 for m in members]
        names = members[0].metrics.keys()
        means = {k: sum(w * m.metrics[k] for w, m in zip(weights, members)) / sum(weights) for k in names}
        blocks.append(BlockSpectrum(index, sum(m.num_params for m in members), means))
    return blocks


def eigen_cost(matrix: PrunableMatrix) -> float:
    """Relative cost of a matrix's spectrum (the Gram product and eigvalsh of the smaller side)."""
    rows, cols = matrix.shape
    small = min(rows, cols)
    return float(rows) * cols * small + small ** 3


def analyze(
    model: nn.Module,
    metrics: Iterable[str] | None = None,
    fix_finger: FixFinger = "reference",
    show_progress: bool = True,
    matrices: Iterable[PrunableMatrix] | None = None,
    block_score: str = "mean",
    esd_sampling: str = "full",
    farms: FarmsOptions | None = None,
) -> ESDReport:
    """ESD metrics of every prunable matrix inside the transformer blocks (embeddings/LM head excluded):
    Linear/Conv1D weights and each expert's slices of fused expert parameters; routers stay out.

    ``esd_sampling="full"`` analyses each whole matrix (fix-finger ``fix_finger``); ``"farms"`` pools the
    eigenvalues of fixed-aspect-ratio windows (:mod:`optimum_alpha.esd_sampling`, options ``farms``) and fits
    them with xmin at the middle of the pooled spectrum (``fix_finger`` is not used)."""
    check_esd_sampling(esd_sampling)
    farms = farms or FarmsOptions()
    wanted = tuple(dict.fromkeys(canonical_metric(m) for m in metrics)) if metrics else METRICS
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise ConfigError(f"Unknown metric(s) {unknown}; choose from {', '.join(METRICS)}.")
    path, blocks = model_weights(model)
    if matrices is None:
        matrices = [m for block in blocks for m in block.matrices]
    def spectrum(matrix: PrunableMatrix) -> MatrixSpectrum:
        weight = matrix.read()
        check_finite(weight, matrix.name)
        if esd_sampling == "farms":
            eigenvalues = farms_eigenvalues(weight, farms)
            given_fit = farms_hill_fit(eigenvalues, matrix.name)
        else:
            eigenvalues, given_fit = matrix_eigenvalues(weight), None
        values, fit = spectrum_metrics(eigenvalues, fix_finger=fix_finger, name=matrix.name, fit=given_fit)
        return MatrixSpectrum(
            block_index=matrix.block_index,
            name=matrix.name,
            shape=(int(weight.shape[0]), int(weight.shape[1])),
            n_eigenvalues=int(eigenvalues.numel()),
            xmin=fit.xmin,
            ks_distance=fit.ks_distance,
            n_tail=fit.n_tail,
            metrics={k: values[k] for k in wanted},
        )

    parallel = current_parallel()  # under torchrun each rank computes its share of the matrices
    matrices = list(matrices)
    progress = tqdm(matrices, desc="ESD analysis", unit="matrix", disable=not show_progress or parallel.active)
    results = parallel.map_balanced(spectrum, progress, [eigen_cost(m) for m in matrices], "computing spectra")
    return ESDReport(results, fix_finger=fix_finger, blocks_path=path, block_score=block_score,
                     esd_sampling=esd_sampling, farms=farms.to_dict() if esd_sampling == "farms" else {})
