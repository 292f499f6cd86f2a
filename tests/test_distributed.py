"""Data-parallel calibration (issue 23): two gloo ranks spawned like torchrun give the one-process result.

One spawn of two processes runs every scenario of ``optimum_alpha/testing/distributed_runs.py`` (the
library makes the process group from torchrun's environment variables); this process runs the same
scenarios without a group for the reference. Bounded: the ranks are killed after ``LIMIT_S``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimum_alpha.distributed import balanced_owners, shard_range
from optimum_alpha.testing.distributed_runs import FAILING_RANK, SCENARIOS, run_all

ROOT = Path(__file__).resolve().parent.parent
RANKS = 2
LIMIT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("distributed")
    tokenizer_dir = folder / "tokenizer"
    tiny_tokenizer.save_pretrained(tokenizer_dir)
    port = _free_port()
    procs = []
    for rank in range(RANKS):
        (folder / f"out{rank}").mkdir()
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(RANKS), "LOCAL_WORLD_SIZE": str(RANKS),
               "OMP_NUM_THREADS": "1", "OPTIMUM_ALPHA_DIST_TIMEOUT": "300", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "optimum_alpha.testing.distributed_runs", str(folder / "shared"),
             str(tokenizer_dir)], env=env, cwd=folder / f"out{rank}", stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
        (folder / "shared").mkdir(exist_ok=True)
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=LIMIT_S)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    ranks = [torch.load(folder / "shared" / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]
    single_dir = folder / "single"
    single_dir.mkdir()
    single = run_all(tiny_tokenizer, single_dir, with_failure=False)
    return {"ranks": ranks, "single": single, "shared": folder / "shared", "single_dir": single_dir}


def test_shares_and_owners_cover_everything_once():
    assert [list(shard_range(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    owners = balanced_owners([9.0, 1.0, 5.0, 4.0], 2)
    assert owners == [0, 0, 1, 1]  # 9 + 1 | 5 + 4: the largest first, each to the least loaded rank


@pytest.mark.parametrize("scenario", ["wanda_alpha", "magnitude_alpha", "wanda_owl", "wanda_moe"])
def test_masks_and_targets_equal_one_process(runs, scenario):
    single = runs["single"][scenario]
    for rank in runs["ranks"]:
        result = rank[scenario]
        assert result["targets"] == pytest.approx(single["targets"], abs=1e-12)
        assert result["uncalibrated"] == single["uncalibrated"]
        for name, weight in single["weights"].items():
            assert torch.equal(result["weights"][name] == 0, weight == 0), name
            torch.testing.assert_close(result["weights"][name], weight, rtol=0, atol=0)
        if "alphas" in single:
            assert result["alphas"] == pytest.approx(single["alphas"], abs=1e-10)


@pytest.mark.parametrize("scenario", ["sparsegpt", "alps"])
def test_second_order_weights_equal_one_process_within_float_tolerance(runs, scenario):
    single = runs["single"][scenario]
    ranks = runs["ranks"]
    for name, weight in single["weights"].items():
        torch.testing.assert_close(ranks[0][scenario]["weights"][name], ranks[1][scenario]["weights"][name],
                                   rtol=0, atol=0)  # every rank holds the owner's weights exactly
        torch.testing.assert_close(ranks[0][scenario]["weights"][name], weight, rtol=1e-4, atol=1e-5)
        mismatch = (ranks[0][scenario]["weights"][name] == 0) != (weight == 0)
        assert mismatch.float().mean() < 1e-3, name  # float64 Hessian sums: masks equal but for float ties


def test_width_pruning_shapes_equal_one_process(runs):
    single = runs["single"]["width"]["weights"]
    for rank in runs["ranks"]:
        assert {k: v.shape for k, v in rank["width"]["weights"].items()} == {k: v.shape for k, v in single.items()}


def test_only_rank_0_writes_the_checkpoint(runs):
    calls = [rank["save"]["writer_calls"] for rank in runs["ranks"]]
    assert calls == [1, 0]
    written = sorted(p.name for p in (runs["shared"] / "checkpoint").iterdir())
    expected = sorted(p.name for p in (runs["single_dir"] / "checkpoint").iterdir())
    assert written == expected and "model.safetensors" in " ".join(written)


def test_a_failing_rank_ends_every_rank_with_one_error_naming_it(runs):
    for rank in runs["ranks"]:
        message = rank["failure"]
        assert message.startswith("DistributedRunError: ")
        assert f"Rank {FAILING_RANK} of {RANKS} failed while pruning block 0" in message
        assert "a pruner failed on purpose" in message
