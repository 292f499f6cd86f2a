"""Data-parallel calibration with ``torch.distributed``: one model pruned by N processes (``torchrun``).

A run is data-parallel when a process group is initialised (the Python API inside one) or when torchrun's
``WORLD_SIZE`` is above 1 (the group is then initialised here: NCCL when every local rank has a GPU, gloo
otherwise). Otherwise :func:`current` is :class:`SingleProcess`, whose hooks do nothing, so one process
behaves exactly as before.

What each rank does (every rank loads the whole model):

* calibration: the windows are sampled on every rank with the same seed, and rank r keeps its contiguous
  share (:meth:`Parallel.shard`); every rank replays each pruned block on its own share;
* statistics: after a block's statistics pass, each matrix's sums (Wanda's Σx², SparseGPT/ALPS's XᵀX,
  OWL/DLP's Σx², width pruning's Gram matrices) are **all-reduced** in float64 with their token counts
  (:meth:`Parallel.sum_statistics`). All-reduce rather than reduce-to-owner, because every rank must know
  which expert matrices received tokens anywhere (the report and the magnitude fallback) and OWL/width
  pruning need the sums on every rank; its cost is one float64 copy of a block's statistics per rank;
* solving: every matrix of a block has one owner rank (greedy balance of the solver cost, the same on every
  rank); the owner prunes it and broadcasts the new weight, and every rank writes every new weight, so
  all ranks hold the same model after each block (:meth:`Parallel.owners`, :meth:`Parallel.share`);
* ESD: the matrices are split by the same balance and the spectra gathered (:meth:`Parallel.map_balanced`);
* files: only rank 0 writes checkpoints, reports and plots and pushes (:attr:`Parallel.is_main`).

Failures: local work runs inside :meth:`Parallel.step`, which ends with an exchange of every rank's status,
so an exception on any rank ends every rank with one :class:`~optimum_alpha.errors.DistributedRunError`
naming that rank. Collectives run under the group's time-out (``OPTIMUM_ALPHA_DIST_TIMEOUT`` seconds when
the group is made here, default 1800), so a rank that dies outside a step cannot hang the others forever.
A Ctrl-C is not caught: torchrun delivers it to every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from typing import Any, Callable, Iterator, Protocol, Sequence, TypeVar

import torch

from .errors import DistributedRunError

T = TypeVar("T")
R = TypeVar("R")
TIMEOUT_ENV = "OPTIMUM_ALPHA_DIST_TIMEOUT"


class Reducible(Protocol):
    """Statistics that can be summed over ranks: float64 sums (zeros when nothing was seen) and back."""

    def partial_sums(self, width: int) -> list[torch.Tensor]: ...

    def load_sums(self, sums: list[torch.Tensor]) -> None: ...


def balanced_owners(costs: Sequence[float], ranks: int) -> list[int]:
    """Owner rank of each item: largest cost first to the least loaded rank (ties: lowest rank, then
    position), so every rank computes the same assignment."""
    load = [0.0] * ranks
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


def shard_range(count: int, rank: int, ranks: int) -> range:
    """Rank ``rank``'s contiguous share of ``count`` items (the first ``count % ranks`` ranks get one more)."""
    base, extra = divmod(count, ranks)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class Parallel:
    """One process: every hook is the identity (the behaviour of a run without torch.distributed)."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, ids: torch.Tensor) -> torch.Tensor:
        """This rank's calibration windows."""
        return ids

    def owners(self, costs: Sequence[float]) -> list[int]:
        return [0] * len(costs)

    def sum_statistics(self, items: Sequence[tuple[Reducible, int]]) -> None:
        """Replace each ``(statistics, input width)``'s statistics by their sum over ranks (items in the same
        order on every rank)."""

    def share(self, tensor: torch.Tensor, owner: int) -> torch.Tensor:
        """The owner's ``tensor`` on every rank (others pass a buffer of the same shape and dtype)."""
        return tensor

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Local work; under several ranks, a failure on any rank fails every rank (see the module doc)."""
        yield

    def map_balanced(self, function: Callable[[T], R], items: Sequence[T], costs: Sequence[float],
                     what: str) -> list[R]:
        """``[function(item) for item in items]``, each item computed by one rank and gathered on all."""
        return [function(item) for item in items]

    def on_main(self, function: Callable[[], R], what: str) -> R | None:
        """``function()`` on rank 0 only (writing files); the other ranks wait for it, share its failure and
        get None."""
        return function()


class SingleProcess(Parallel):
    pass


class DataParallel(Parallel):
    """Ranks of an initialised ``torch.distributed`` process group (see the module docstring)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        backend = str(dist.get_backend()).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def shard(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[0] < self.world_size:
            raise DistributedRunError(
                f"{ids.shape[0]} calibration windows cannot be shared by {self.world_size} ranks; use nsamples >= "
                f"{self.world_size} or fewer ranks.")
        share = shard_range(ids.shape[0], self.rank, self.world_size)
        return ids[share.start:share.stop]

    def owners(self, costs: Sequence[float]) -> list[int]:
        return balanced_owners(costs, self.world_size)

    def sum_statistics(self, items: Sequence[tuple[Reducible, int]]) -> None:
        for item, width in items:  # one collective per item: a block's statistics are never all copied at once
            parts = item.partial_sums(width)
            if not parts:  # the same on every rank, so every rank raises here: no collective is left waiting
                raise DistributedRunError(
                    f"{type(item).__name__} cannot sum its statistics over ranks (it has no partial_sums); run "
                    "it in one process, or implement partial_sums/load_sums (docs/architecture.md).")
            flat = torch.cat([p.reshape(-1).to(device=self.device, dtype=torch.float64) for p in parts])
            self.dist.all_reduce(flat)
            sums, offset = [], 0
            for part in parts:
                sums.append(flat[offset:offset + part.numel()].view(part.shape).to(part.device))
                offset += part.numel()
            item.load_sums(sums)

    def share(self, tensor: torch.Tensor, owner: int) -> torch.Tensor:
        buffer = tensor.detach().to(self.device).contiguous()
        self.dist.broadcast(buffer, src=owner)
        return buffer.to(tensor.device)

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        error: Exception | None = None
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it; re-raised below
            error = exc
        statuses: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(statuses, None if error is None else f"{type(error).__name__}: {error}")
        failed = [(rank, status) for rank, status in enumerate(statuses) if status is not None]
        if failed:
            rank, status = failed[0]
            others = f" (and ranks {[r for r, _ in failed[1:]]})" if len(failed) > 1 else ""
            raise DistributedRunError(
                f"Rank {rank} of {self.world_size} failed while {what}{others}: {status}") from error

    def map_balanced(self, function: Callable[[T], R], items: Sequence[T], costs: Sequence[float],
                     what: str) -> list[R]:
        owners = self.owners(costs)
        mine: dict[int, R] = {}
        with self.step(what):
            for i, item in enumerate(items):
                if owners[i] == self.rank:
                    mine[i] = function(item)
        gathered: list[Any] = [None] * self.world_size
        self.dist.all_gather_object(gathered, mine)
        merged = {i: value for part in gathered for i, value in part.items()}
        return [merged[i] for i in range(len(items))]

    def on_main(self, function: Callable[[], R], what: str) -> R | None:
        result = None
        with self.step(what):
            if self.is_main:
                result = function()
        return result


_CURRENT: Parallel | None = None
_OWN_GROUP = False  # whether this module made the process group (then it also destroys it)


def _init_from_environment() -> None:
    """torchrun's environment: make the process group (NCCL when every local rank has a GPU, else gloo)."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    use_nccl = torch.cuda.is_available() and torch.cuda.device_count() >= local_world and dist.is_nccl_available()
    if use_nccl:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
    dist.init_process_group("nccl" if use_nccl else "gloo", timeout=timeout)
    global _OWN_GROUP
    _OWN_GROUP = True


def shutdown() -> None:
    """Destroy the process group if :func:`current` made it (the end of a torchrun command)."""
    global _CURRENT, _OWN_GROUP
    import torch.distributed as dist

    if _OWN_GROUP and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT, _OWN_GROUP = None, False


def quiet_other_ranks() -> bool:
    """Under several ranks, only rank 0 prints results and progress bars (errors still reach stderr);
    returns whether this process is one of the quiet ranks."""
    parallel = current()
    if parallel.active and not parallel.is_main:
        os.environ["TQDM_DISABLE"] = "1"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        return True
    return False


def current() -> Parallel:
    """The data-parallel context of this process: the initialised process group, torchrun's, or one process."""
    global _CURRENT
    import torch.distributed as dist

    if not dist.is_available():
        return SingleProcess()
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _init_from_environment()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        _CURRENT = None
        return SingleProcess()
    if _CURRENT is None or not isinstance(_CURRENT, DataParallel) or _CURRENT.world_size != dist.get_world_size() \
            or _CURRENT.rank != dist.get_rank():
        _CURRENT = DataParallel()
    return _CURRENT
