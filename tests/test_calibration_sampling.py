"""Calibration windows as the references draw them (one document per window, random offset, short documents
skipped), the joined fallback with its notice, the paper's 128 windows by default, and which C4 is used."""

from __future__ import annotations

import json
import random
import socket

import pytest
import torch

import optimum_alpha.c4 as c4_module
from optimum_alpha import AlphaPruner, AlphaPruningConfig
from optimum_alpha.c4 import SHIPPED_LABEL, c4_source, use_hub_c4
from optimum_alpha.data import PAPER_NSAMPLES, load_texts, sample_calibration

from conftest import make_tiny_model


def _contains(doc: torch.Tensor, window: torch.Tensor) -> int | None:
    """Offset of ``window`` inside ``doc``, or None."""
    n = window.numel()
    for start in range(doc.numel() - n + 1):
        if torch.equal(doc[start : start + n], window):
            return start
    return None


@pytest.fixture
def mixed_file(tmp_path):
    """Six documents: three long (120+ tokens with the tiny tokenizer) and three of a few words."""
    rows = load_texts("c4")
    long_docs = [row for row in rows if len(row) > 2000][:3]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in long_docs + ["short one", "tiny", "a b c"]))
    return path, long_docs


def test_each_window_lies_inside_one_long_document(tiny_tokenizer, mixed_file):
    path, long_docs = mixed_file
    sample = sample_calibration(tiny_tokenizer, path, nsamples=3, seqlen=64, seed=0)
    assert sample.sampling == "document" and sample.ids.shape == (3, 64) and not sample.notices
    docs = [tiny_tokenizer(t, add_special_tokens=False, return_tensors="pt").input_ids[0] for t in long_docs]
    homes = []
    for window in sample.ids:
        found = [(i, _contains(doc, window)) for i, doc in enumerate(docs) if _contains(doc, window) is not None]
        assert len(found) == 1  # inside exactly one of the long documents; short ones are skipped
        homes.append(found[0])
    assert sorted(i for i, _ in homes) == [0, 1, 2]  # one window per document
    offsets = {seed: sample_calibration(tiny_tokenizer, path, 3, 64, seed=seed).ids for seed in (0, 1, 2)}
    assert not torch.equal(offsets[0], offsets[1]) or not torch.equal(offsets[0], offsets[2])
    assert torch.equal(offsets[0], sample.ids)  # deterministic for a seed


def test_too_few_long_documents_fall_back_to_joined_with_a_notice(tiny_tokenizer, mixed_file, caplog):
    path, _ = mixed_file
    sample = sample_calibration(tiny_tokenizer, path, nsamples=5, seqlen=64)
    assert sample.sampling == "joined" and sample.ids.shape == (5, 64)
    assert "only 3 documents" in sample.notices[0] and "joined" in sample.notices[0]
    joined = sample_calibration(tiny_tokenizer, path, nsamples=5, seqlen=64, sampling="joined")
    assert torch.equal(sample.ids, joined.ids) and not joined.notices


def test_default_nsamples_is_the_papers_128_or_what_the_source_holds(tiny_tokenizer, mixed_file):
    sample = sample_calibration(tiny_tokenizer, "c4", nsamples=None, seqlen=32)
    assert sample.ids.shape == (PAPER_NSAMPLES, 32) and sample.sampling == "document"
    path, _ = mixed_file
    small = sample_calibration(tiny_tokenizer, path, nsamples=None, seqlen=256)
    rows = load_texts(path)
    random.Random(0).shuffle(rows)
    tokens = len(tiny_tokenizer("\n\n".join(rows), add_special_tokens=False).input_ids)
    assert small.sampling == "joined" and small.ids.shape[0] == tokens // 256 < PAPER_NSAMPLES
    assert any("instead of the paper's 128" in notice for notice in small.notices)


def test_report_says_which_sampling_how_many_windows_and_which_source(tiny_tokenizer):
    pruner = AlphaPruner.from_pretrained(make_tiny_model("llama", layers=2), tokenizer=tiny_tokenizer,
                                         show_progress=False)
    config = AlphaPruningConfig(sparsity=0.5, allocation="uniform", nsamples=3, seqlen=32)
    _, report = pruner.prune(config, show_progress=False)
    cal = report.calibration
    assert (cal["sampling"], cal["windows"], cal["nsamples"], cal["source"]) == ("document", 3, 3, SHIPPED_LABEL)
    assert pruner.metadata()["calibration"]["sampling"] == "document"


def test_offline_means_the_shipped_sample_without_touching_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the offline decision opened a connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert use_hub_c4({"HF_HUB_OFFLINE": "1"}) is False
    assert use_hub_c4({"HF_DATASETS_OFFLINE": "true"}) is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert c4_source() == ("c4", SHIPPED_LABEL)


class _Connection:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_online_branch_is_chosen_when_the_hub_answers(monkeypatch):
    """Only the network is mocked: a connection that opens means the Hub shard, one that fails the sample."""
    opened = []
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: opened.append(address) or _Connection())
    assert use_hub_c4({}) is True
    assert opened and opened[0][1] == 443

    def refused(address, timeout):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refused)
    assert use_hub_c4({}) is False
    assert c4_module.C4_SHARD == "en/c4-train.00000-of-01024.json.gz" and c4_module.C4_REPO == "allenai/c4"
