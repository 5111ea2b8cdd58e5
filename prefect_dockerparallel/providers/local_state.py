"""The local provider's private state: directory, state files, and proof that a PID is ours.

A state file holds the cluster's Redis password and signing key, so everything here assumes a
hostile neighbour on the same machine: the directory must be 0700 and owned by us (a directory
another user pre-created in /tmp is refused, never used), files are created with
O_EXCL | O_NOFOLLOW and mode 0600 and replaced atomically, and a recorded PID counts as the
cluster's only while its start time and command line still match what was recorded at spawn
(a PID reused by an unrelated process is never signalled).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any


class StateDirError(RuntimeError):
    """The state directory is not private to the current user."""


def state_dir() -> Path:
    """The per-user state directory, created 0700; refused when not private to this user."""
    base = os.environ.get("DOCKERPARALLEL_STATE_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    root = Path(base or tempfile.gettempdir())
    if os.environ.get("DOCKERPARALLEL_STATE_DIR"):
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = root / f"prefect-dockerparallel-{os.getuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Refuse a directory that is a symlink, not ours, or open to group/others."""
    st = os.lstat(path)
    uid = os.geteuid()
    fix = (
        f"remove it (`rm -rf {path}`, as its owner or root) and run again, or set "
        "DOCKERPARALLEL_STATE_DIR to a directory only you can write"
    )
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path} is not a plain directory (a symlink?): {fix}")
    if st.st_uid != uid:
        raise StateDirError(
            f"state directory {path} belongs to uid {st.st_uid}, not to you (uid {uid}): another user "
            f"may have created it to read your clusters' secrets; {fix}"
        )
    if st.st_mode & 0o077:
        raise StateDirError(
            f"state directory {path} has mode {stat.S_IMODE(st.st_mode):04o}, open to other users: "
            f"`chmod 700 {path}` (and remove files you did not create), or set DOCKERPARALLEL_STATE_DIR"
        )


def _open_new(path: Path, flags: int = 0) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | flags, 0o600)


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Write a state file atomically: a fresh O_EXCL 0600 file, then rename over the old one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = _open_new(tmp)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_state(path: Path) -> dict[str, Any] | None:
    """A state file's content, or None when missing, unreadable, not ours or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        try:
            data = json.load(fh)
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


def open_log(path: Path) -> IO[bytes]:
    """The cluster's log, appended to; created 0600, never through a symlink."""
    try:
        fd = _open_new(path, os.O_APPEND)
    except FileExistsError:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    return os.fdopen(fd, "ab")


# -- proof that a PID is still the process we started ----------------------------------------
def identity(pid: int) -> dict[str, Any] | None:
    """{pid, start, cmdline} of a live process (from /proc, else `ps`), or None when it is gone."""
    if not os.path.isdir("/proc/self"):
        return _identity_from_ps(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().decode(errors="replace").split("\0")[:-1]
    except (OSError, IndexError):
        return None
    if fields[0] == b"Z":
        return None
    return {"pid": pid, "start": int(fields[19]), "cmdline": cmdline}


def _identity_from_ps(pid: int) -> dict[str, Any] | None:
    """macOS and other systems without /proc: start time and command line as `ps` prints them."""
    try:
        out = subprocess.run(
            ["ps", "-o", "stat=", "-o", "lstart=", "-o", "command=", "-p", str(pid)],
            capture_output=True, text=True, timeout=10,
        ).stdout.split(None, 6)
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) < 7 or out[0].startswith("Z"):
        return None
    return {"pid": pid, "start": " ".join(out[1:6]), "cmdline": [out[6].strip()]}


def is_ours(record: Any) -> bool:
    """True only if the recorded process still runs: same PID, start time and command line.

    A bare PID (a state file of an older version) proves nothing and is never trusted.
    """
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return False
    now = identity(record["pid"])
    if now is None or now["start"] != record.get("start") or not isinstance(record.get("cmdline"), list):
        return False
    return " ".join(now["cmdline"]) == " ".join(map(str, record["cmdline"]))
