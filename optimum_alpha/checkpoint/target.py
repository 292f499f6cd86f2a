"""Where a checkpoint folder goes and how it is put there, without ever losing a folder.

A save writes everything into a staging folder of ours and only then puts it in place:

* a new target: one ``rename`` of the staging folder. Two saves racing for the same new folder cannot both
  win, because ``rename`` refuses a non-empty destination: the loser gets a :class:`CheckpointError`;
* an existing checkpoint (``overwrite``): the old folder is renamed to a backup, the staging folder takes
  its name, the backup is deleted (restored if the swap fails). Files the old checkpoint did not write
  (listed in its manifest) are hard-linked into the new folder first, so they are never deleted;
* an existing empty folder that cannot be renamed (a mount point): the staging folder lives inside it,
  behind a lock file, and its files are moved in one by one (``config.json`` last).

Staging and backup names carry the host and process id (``.<name>.tmp-<host>-<pid>-<hex>``), so a later
save can tell the leftovers of a killed process from those of a save still running, and sweeps them.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import socket
import stat
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import CheckpointError
from ..interrupts import hold_interrupts

logger = logging.getLogger(__name__)

METADATA_FILE = "alpha_pruning.json"
MANIFEST_KEY = "files"
LOCK_FILE = ".optimum-alpha.lock"
FORCE = "force"
FORCE_HINT = "overwrite='force' (CLI: --force-overwrite)"
V01_PATTERNS = (
    "config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json", "tokenizer*",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt",
    METADATA_FILE, "alpha_profile.png", "README.md",
)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"


def _own_name(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _leftover_pattern(target: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-([A-Za-z0-9]+)-(\d+)-[0-9a-f]{{8}}$")


def overwrite_mode(overwrite: bool | str) -> bool | str:
    """Validate ``overwrite``: ``False``, ``True`` (replace a checkpoint of ours) or ``"force"`` (any folder)."""
    if isinstance(overwrite, bool) or overwrite == FORCE:
        return overwrite
    raise CheckpointError(f"overwrite must be False, True or {FORCE!r}, got {overwrite!r}")


def _protected(target: Path) -> str | None:
    """Why ``target`` must never be replaced (the current folder or one holding it, home, a root), else None."""
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        return "it is the current directory or contains it"
    if target == Path.home().resolve():
        return "it is the home directory"
    if target.parent == target:
        return "it is a filesystem root"
    return None


def read_manifest(folder: Path) -> list[str] | None:
    """The top-level names a save of ours wrote into ``folder`` (None: not written by optimum-alpha)."""
    try:
        data = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "library_version" not in data or "format" not in data:
        return None
    files = data.get(MANIFEST_KEY)
    if isinstance(files, list) and all(isinstance(name, str) for name in files):
        return files
    # A v0.1 checkpoint of ours, from before the manifest: the names such a save writes.
    return [name for name in os.listdir(folder) if any(fnmatch.fnmatch(name, p) for p in V01_PATTERNS)]


def _visible_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` other than our lock and the staging folders of a save into it (mount point)."""
    pattern = _leftover_pattern(folder)
    return [name for name in os.listdir(folder) if name != LOCK_FILE and not pattern.match(name)]


def check_save_target(target: Path, overwrite: bool | str) -> None:
    """Refuse a target that is a file, a protected folder, or a non-empty folder we may not replace.

    Nothing is written. ``overwrite=True`` replaces only a checkpoint written by optimum-alpha;
    ``"force"`` also a folder that is not one (its files are kept unless the new checkpoint has a file of
    the same name).
    """
    overwrite = overwrite_mode(overwrite)
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"save target {target} is a file; pass a folder path")
    reason = _protected(target)
    if reason:
        raise CheckpointError(f"refusing to save into {target}: {reason}; pass a new sub-folder instead")
    try:
        if not target.is_dir() or not _visible_entries(target):
            return
    except OSError as error:  # an existing folder this user may not list (or a parent it may not enter)
        raise CheckpointError(
            f"cannot read the save target {target} ({error.strerror or error}); choose a folder you can read and "
            "write, or fix its permissions"
        ) from error
    if not overwrite:
        raise CheckpointError(
            f"save target {target} already exists and is not empty; pass overwrite=True (CLI: --overwrite) "
            "or choose another folder"
        )
    if overwrite is True and read_manifest(target) is None:
        raise CheckpointError(
            f"save target {target} is not a checkpoint written by optimum-alpha (no {METADATA_FILE}); "
            f"choose another folder, or pass {FORCE_HINT} to replace the checkpoint files in it (its other "
            "files are kept)"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree(path: Path) -> bool:
    """Delete a folder of ours (a staging folder or the backup of an overwritten checkpoint), also where a
    sub-folder lacks write permission (carried over from a read-only folder of the user's); True when gone.
    What cannot be deleted (another user's files) is named in a warning rather than left in silence."""

    def make_writable(function: Any, name: str, exc: Any) -> None:
        # Listing a folder failed: the folder lacks rights; deleting an entry failed: its parent does.
        folder = name if function in (os.scandir, os.open, os.listdir) else os.path.dirname(name)
        os.chmod(folder, os.stat(folder).st_mode | stat.S_IRWXU)  # a folder we own: we may give ourselves rights
        if os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name)
        else:
            os.unlink(name)

    try:
        shutil.rmtree(path, onerror=make_writable)
    except OSError as error:
        if path.exists():
            logger.warning("could not delete %s (%s); remove it by hand", path, error)
            return False
    return not path.exists()


def sweep_leftovers(target: Path) -> None:
    """Remove the staging folders (and settle the backups) that killed saves of ``target`` left behind.

    Only names of ours, from this host, whose process is gone. A backup whose swap was interrupted
    is the only copy of the old folder when the target is missing: it is renamed back then.
    """
    pattern = _leftover_pattern(target)
    for where in (target.parent, target):
        try:
            names = os.listdir(where)
        except OSError:
            continue
        for name in names:
            match = pattern.match(name)
            if not match or match.group(2) != _host() or _pid_alive(int(match.group(3))):
                continue
            path = where / name
            if match.group(1) == "old" and where == target.parent and not target.exists():
                os.replace(path, target)
                logger.warning("restored %s from the backup %s left by an interrupted save", target, name)
            else:
                remove_tree(path)
        lock = where / LOCK_FILE
        if where == target and lock.is_file():
            try:
                pid = int(lock.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if not _pid_alive(pid):
                lock.unlink(missing_ok=True)


def is_mount_point(folder: Path) -> bool:
    """True for a folder that cannot be renamed away: a mount point (volume root)."""
    return folder.is_dir() and (os.path.ismount(folder) or folder.stat().st_dev != folder.parent.stat().st_dev)


def _in_place(target: Path) -> bool:
    return target.is_dir() and is_mount_point(target)


def _take_lock(target: Path) -> None:
    try:
        fd = os.open(target / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
        raise CheckpointError(
            f"another save is writing into {target} (lock {LOCK_FILE}); wait for it or choose another folder"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{os.getpid()} {_host()}\n")


def make_staging(target: Path) -> Path:
    """Create the staging folder (mode from the umask) for ``target``: beside it, or inside a mount point."""
    try:
        sweep_leftovers(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if _in_place(target):
            _take_lock(target)
            staging = target / _own_name(target, "tmp")
        else:
            staging = target.parent / _own_name(target, "tmp")
        os.mkdir(staging)
    except OSError as error:
        raise CheckpointError(f"cannot write next to {target} ({error}); choose a writable folder") from error
    return staging


def discard_staging(staging: Path, target: Path) -> None:
    """Remove a staging folder after a failure (and our lock inside a mount point)."""
    remove_tree(staging)
    if staging.parent == target:
        (target / LOCK_FILE).unlink(missing_ok=True)


def _kept_entries(target: Path, new_names: Iterable[str]) -> list[str]:
    """Entries of the old ``target`` that the save must not delete: everything our manifest does not list."""
    if not target.is_dir():
        return []
    ours = set(read_manifest(target) or ()) | set(new_names)
    return [name for name in _visible_entries(target) if name not in ours]


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _carry_over(target: Path, staging: Path, names: list[str]) -> None:
    """Hard-link (or copy) the entries of the old folder that are not ours into the new one."""
    for name in names:
        source = target / name
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, staging / name, symlinks=True, copy_function=_link_or_copy)
        elif source.is_symlink():
            os.symlink(os.readlink(source), staging / name)
        else:
            _link_or_copy(source, staging / name)


def _raced(target: Path) -> CheckpointError:
    return CheckpointError(
        f"save target {target} was created by another process while this save was running; nothing was "
        "replaced. Choose another folder, or pass overwrite=True to replace it"
    )


@contextlib.contextmanager
def _final_step(target: Path) -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM while the finished folder is put in place (renames and deletions, quick), then
    ignore them: stopping half-way would leave no complete folder, and once done the save has succeeded."""
    with hold_interrupts(deliver=False) as received:
        yield
    if received:
        logger.warning("interrupt received while %s was put in place; the save completed and stands", target)


def _swap_in(staging: Path, target: Path, overwrite: bool | str) -> None:
    """Put a staging folder beside ``target`` in its place (see the module docstring)."""
    if not target.exists():
        try:
            os.rename(staging, target)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise _raced(target) from error
            raise
        return
    if not _visible_entries(target):
        try:
            os.rename(staging, target)  # replaces an empty folder; refuses one that filled up meanwhile
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not overwrite:
                raise _raced(target) if error.errno in (errno.ENOTEMPTY, errno.EEXIST) else error
    elif not overwrite:
        raise _raced(target)
    _carry_over(target, staging, _kept_entries(target, os.listdir(staging)))
    backup = target.with_name(_own_name(target, "old"))
    with _final_step(target):  # a Ctrl-C between the two renames would leave the target missing
        os.rename(target, backup)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(backup, target)
            raise
        remove_tree(backup)


def _move_in(staging: Path, target: Path, overwrite: bool | str) -> None:
    """Fill a folder that cannot be renamed (a mount point) from the staging folder inside it."""
    new_names = os.listdir(staging)
    visible = _visible_entries(target)
    if visible and not overwrite:
        raise _raced(target)
    kept = set(_kept_entries(target, new_names))
    # The manifest first (a partial folder is then recognised as ours), config.json last (a partial
    # folder does not load as a model).
    order = sorted(new_names, key=lambda name: (name != METADATA_FILE, name == "config.json"))
    with _final_step(target):
        for name in visible:  # the old checkpoint's files (and same-name ones): replaced
            if name not in kept:
                path = target / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        for name in order:
            os.replace(staging / name, target / name)
        os.rmdir(staging)
        (target / LOCK_FILE).unlink(missing_ok=True)


def put_in_place(staging: Path, target: Path, overwrite: bool | str) -> None:
    """Move the finished staging folder to ``target``; raises CheckpointError if another save won."""
    if staging.parent == target:
        _move_in(staging, target, overwrite)
    else:
        _swap_in(staging, target, overwrite)
