"""Hub push: the calls made at HfApi's boundary, error messages, and one real HTTP round trip on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from transformers import LlamaConfig, LlamaForCausalLM

from optimum_alpha.checkpoint import push_folder_to_hub, save_pruned
from optimum_alpha.errors import CheckpointError


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, ::2] = 0
    return save_pruned(model, tmp_path_factory.mktemp("hub") / "pruned", format="sparse")


class RecordingApi:
    """Stands in for HfApi: records calls, optionally raises from one of them."""

    def __init__(self, fail_on: str | None = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fail_on, self.error = fail_on, error

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))
        if self.fail_on == "create_repo":
            raise self.error
        return "https://huggingface.co/me/pruned"

    def upload_folder(self, *args, **kwargs):
        self.calls.append(("upload_folder", args, kwargs))
        self.seen_files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        if self.fail_on == "upload_folder":
            raise self.error
        return None


def http_error(status: int, message: str) -> HfHubHTTPError:
    from httpx2 import Request, Response

    response = Response(status, request=Request("POST", "https://huggingface.co/api/repos/create"))
    return HfHubHTTPError(message, response=response, server_message=message)


def test_push_creates_repo_then_uploads_exactly_the_saved_folder(saved_folder):
    api = RecordingApi()
    url = push_folder_to_hub(
        saved_folder, "me/pruned", private=True, token="hf_x", commit_message="msg", api=api
    )
    assert url == "https://huggingface.co/me/pruned"
    (name1, args1, kw1), (name2, _, kw2) = api.calls
    assert name1 == "create_repo" and args1 == ("me/pruned",)
    assert kw1 == {"repo_type": "model", "private": True, "token": "hf_x", "exist_ok": True}
    assert name2 == "upload_folder"
    assert kw2 == {
        "repo_id": "me/pruned",
        "folder_path": str(saved_folder),
        "repo_type": "model",
        "commit_message": "msg",
        "token": "hf_x",
    }
    assert api.seen_files == sorted(p.name for p in saved_folder.iterdir())
    assert {"config.json", "model.safetensors", "README.md", "alpha_pruning.json"} <= set(api.seen_files)


@pytest.mark.parametrize(
    ("fail_on", "error", "expected"),
    [
        ("create_repo", LocalTokenNotFoundError("no token"), "hf auth login"),
        ("create_repo", http_error(401, "Invalid credentials"), "rejected the token"),
        ("create_repo", http_error(403, "You don't have the rights"), "403: You don't have the rights"),
        ("upload_folder", http_error(500, "boom"), "HTTP 500: boom"),
    ],
)
def test_hub_errors_become_checkpoint_errors_that_name_the_fix(saved_folder, fail_on, error, expected):
    api = RecordingApi(fail_on=fail_on, error=error)
    with pytest.raises(CheckpointError, match=expected):
        push_folder_to_hub(saved_folder, "me/pruned", api=api)


def test_push_refuses_unsaved_folder_or_bad_repo_id(tmp_path, saved_folder):
    api = RecordingApi()
    with pytest.raises(CheckpointError, match="save it first"):
        push_folder_to_hub(tmp_path, "me/pruned", api=api)
    with pytest.raises(CheckpointError, match="invalid Hub repo id"):
        push_folder_to_hub(saved_folder, "a/b/c", api=api)
    assert api.calls == []


class FakeHub(BaseHTTPRequestHandler):
    """The Hub endpoints a small-file push uses: create repo, card validation, preupload, commit."""

    received: dict[str, bytes] = {}
    validated_cards: list[str] = []
    requests: list[tuple[str, str]] = []
    refuse_create = False

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status >= 400:
            self.send_header("X-Error-Message", payload.get("error", ""))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        FakeHub.requests.append((self.path, self.headers.get("authorization", "")))
        if self.path == "/api/repos/create":
            if FakeHub.refuse_create:
                return self._reply(403, {"error": "You don't have the rights to create a repo here"})
            owner = json.loads(body)["organization"]
            return self._reply(200, {"url": f"http://{self.headers['host']}/{owner}/x"})
        if self.path == "/api/validate-yaml":
            FakeHub.validated_cards.append(json.loads(body)["content"])
            return self._reply(200, {"warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._reply(200, {"files": modes})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    FakeHub.received[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            host = f"http://{self.headers['host']}"
            oid = "1" * 40
            return self._reply(200, {"commitUrl": f"{host}/me/pruned/commit/{oid}", "commitOid": oid})
        return self._reply(404, {"error": f"unexpected {self.path}"})


@pytest.fixture()
def fake_hub():
    FakeHub.received, FakeHub.requests, FakeHub.validated_cards, FakeHub.refuse_create = {}, [], [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_push_over_http_to_a_loopback_hub_uploads_every_file_byte_for_byte(
    saved_folder, fake_hub, monkeypatch
):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    api = HfApi(endpoint=fake_hub, token="hf_test_token")
    push_folder_to_hub(saved_folder, "me/pruned", token="hf_test_token", api=api)
    expected = {p.name: p.read_bytes() for p in saved_folder.iterdir() if p.is_file()}
    assert FakeHub.received == expected
    assert FakeHub.validated_cards == [expected["README.md"].decode()]  # the Hub checks the card's YAML
    assert FakeHub.requests[0][0] == "/api/repos/create"
    assert all(auth == "Bearer hf_test_token" for _, auth in FakeHub.requests)


def test_loopback_hub_refusal_surfaces_as_checkpoint_error(saved_folder, fake_hub, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    FakeHub.refuse_create = True
    api = HfApi(endpoint=fake_hub, token="hf_test_token")
    with pytest.raises(CheckpointError, match="403"):
        push_folder_to_hub(saved_folder, "someone-else/pruned", token="hf_test_token", api=api)
    assert FakeHub.received == {}
