"""Push a saved checkpoint folder to the Hugging Face Hub, exactly as it is on disk."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import CheckpointError

_LOGIN_HINT = "run `hf auth login`, set the HF_TOKEN environment variable, or pass token=..."


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors of the HTTP clients huggingface_hub may use (httpx2, httpx, requests)."""
    found: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "exceptions")):
        try:
            error = getattr(__import__(module), name)
        except (ImportError, AttributeError):
            continue
        found.append(error.RequestException if module == "requests" else error)
    return tuple(found)


STALL_TIMEOUT_S = 60.0  # seconds an upload may go without the Hub sending or accepting a byte


def retry_command(folder: Path, repo_id: str, private: bool | None = None,
                  timeout: float = STALL_TIMEOUT_S) -> str:
    """The command that pushes the saved folder again."""
    return (f"optimum-cli alpha-prune push {folder} {repo_id}" + (" --private" if private else "")
            + (f" --timeout {timeout:g}" if timeout != STALL_TIMEOUT_S else ""))


def _timeout_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(getattr(__import__(module), "TimeoutException"))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


@contextlib.contextmanager
def stall_timeout(seconds: float) -> Iterator[None]:
    """huggingface_hub's HTTP client waits forever by default (``timeout=None``): inside the block its shared
    client gives up when a connection, a read or a write makes no progress for ``seconds``. A stall time-out,
    not a limit on the whole upload, so a slow but moving upload of a large model is never cut. The previous
    client factory is put back afterwards."""
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory() -> Any:
        client = previous()
        client.timeout = type(client.timeout)(seconds)
        return client

    _http.set_client_factory(factory)
    try:
        yield
    finally:
        _http.set_client_factory(previous)


def check_repo_id(repo_id: str) -> None:
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise CheckpointError(f"invalid Hub repo id {repo_id!r}; use 'name' or 'owner/name'")


def check_push_target(repo_id: str, token: str | None = None) -> None:
    """What can be checked without the network, before any slow work: the repo id, the offline flag, a token."""
    from huggingface_hub import constants, get_token

    check_repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"cannot push {repo_id}: HF_HUB_OFFLINE is set; unset it to reach the Hub")
    if token is None and get_token() is None:
        raise CheckpointError(f"no Hugging Face token found to push {repo_id}; {_LOGIN_HINT}")


def _explain(error: Exception, repo_id: str) -> CheckpointError:
    """Turn a huggingface_hub failure into a one-line CheckpointError that names the fix."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(error, LocalTokenNotFoundError):
        return CheckpointError(f"no Hugging Face token found to push {repo_id}; {_LOGIN_HINT}")
    if isinstance(error, OfflineModeIsEnabled):
        return CheckpointError(f"cannot push {repo_id}: HF_HUB_OFFLINE is set; unset it to reach the Hub")
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        server = getattr(error, "server_message", None) or str(error).splitlines()[0]
        if status == 401:
            return CheckpointError(f"the Hub rejected the token while pushing {repo_id} (401); {_LOGIN_HINT}")
        if status == 403:
            return CheckpointError(
                f"the Hub refused to let this token write to {repo_id} (403: {server}); use a token with "
                "write access to that namespace or push to a repo you own"
            )
        return CheckpointError(f"pushing {repo_id} failed (HTTP {status}: {server})")
    return CheckpointError(f"pushing {repo_id} failed: {error}")


def name_repo_in_card(folder: Path, repo_id: str) -> None:
    """Make the card's load snippet name the repo the folder is pushed to, instead of a local placeholder."""
    from .model_card import LOCAL_HINT

    card = folder / "README.md"
    if card.is_file():
        text = card.read_text()
        if LOCAL_HINT in text:
            card.write_text(text.replace(f'"{LOCAL_HINT}"', f'"{repo_id}"'))


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
    timeout: float = STALL_TIMEOUT_S,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; returns the repo URL.

    ``api`` is an ``HfApi`` (or a stand-in with the same two methods); by default one is built with
    ``token``. Errors from the Hub become :class:`CheckpointError` with the fix in the message. A Hub that
    accepts or sends nothing for ``timeout`` seconds (a stalled endpoint) ends the push with an error that
    gives the command to push again. Under torchrun only rank 0 pushes; the other ranks wait for it and share
    its failure.
    """
    from ..distributed import current as current_parallel

    url = current_parallel().on_main(
        lambda: _push_here(folder, repo_id, private=private, token=token, commit_message=commit_message, api=api,
                           timeout=timeout),
        f"pushing to {repo_id}")
    return url if url is not None else f"https://huggingface.co/{repo_id}"


def _push_here(folder: str | os.PathLike, repo_id: str, *, private: bool | None, token: str | None,
               commit_message: str | None, api: Any, timeout: float = STALL_TIMEOUT_S) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path} is not a saved model folder (no config.json); save it first, then push"
        )
    check_repo_id(repo_id)
    name_repo_in_card(path, repo_id)
    hub = api if api is not None else HfApi(token=token)
    message = commit_message or f"Upload pruned model ({path.name}) with optimum-alpha"
    try:
        with stall_timeout(timeout):
            repo_url = hub.create_repo(repo_id, repo_type="model", private=private, token=token, exist_ok=True)
            hub.upload_folder(
                repo_id=repo_id, folder_path=str(path), repo_type="model", commit_message=message, token=token
            )
    except _timeout_errors() as error:
        raise CheckpointError(
            f"pushing {repo_id} timed out: the Hub sent or accepted nothing for {timeout:g} s "
            f"({type(error).__name__}); the folder {path} is kept, retry with: {retry_command(path, repo_id, private, timeout)}"
        ) from error
    except (HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled) as error:
        raise _explain(error, repo_id) from error
    except (OSError, *_network_errors()) as error:  # no connection, DNS, TLS, time-out
        raise CheckpointError(
            f"pushing {repo_id} failed: the Hub could not be reached ({error or type(error).__name__}); "
            "check the network (or HF_ENDPOINT) and push again with push_folder_to_hub"
        ) from error
    return str(getattr(repo_url, "url", repo_url))
