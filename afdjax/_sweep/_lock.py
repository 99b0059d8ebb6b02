"""One writer per sweep folder: advisory lock files, stale-lock detection, the multi-process rule.

A sweep that writes into ``OUT`` holds ``OUT/_lock.<i>`` (``i`` its process index; ``0``
for a single process) for its whole run. The file holds JSON: the owner's ``pid``,
``host``, ``started`` (UTC), ``process_index``, ``process_count``, ``grid_hash`` and
whether the owner also holds an ``fcntl.flock`` on it. It is created whole and at once:
written to a temporary name, then ``os.link``-ed to its name, which fails if the name
exists (``O_CREAT | O_EXCL`` where the file system has no hard links). The owner keeps it
open under an exclusive ``flock`` and removes it when the sweep ends, also on an
exception; the operating system drops the ``flock`` when the process ends in any way
(``os._exit``, ``kill -9``).

**The rule.** A lock is *live* unless it is known to be stale. It is stale when it was
written on this host and its ``flock`` can be taken (its owner is gone; this also holds
if the pid was reused), or, for owners without ``flock``, when the pid no longer exists.
A lock from another host is never judged stale: its file must be removed by hand. A
process ``(i, n)`` of a sweep with grid hash ``h`` may write when it holds ``_lock.<i>``
and every other live lock has the same ``n`` and ``h`` (the other processes of the same
job, or of another job of the same sweep and split: each process writes only the points
whose id is its index modulo ``n``, so no point is written twice). Anything else is
refused with a ``ValueError`` naming the folder and the owner. Stale locks in the way are
taken over (same slot) or removed (other slot, other split or sweep), with a
``RuntimeWarning`` that says so; stale locks of other processes of the same split are
left to their own slot's next owner.

Races. The own lock is created before the others are read, so of two processes that start
together at least one sees the other. Taking over a stale lock happens while holding its
``flock``, after checking that the name still points to the same file, so two processes
cannot both take over the same lock (for owners without ``flock`` a short window
remains).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no flock, no automatic stale detection
    fcntl = None

LOCK_PREFIX = "_lock."


def _flock(fd: int) -> bool | None:
    """Take an exclusive flock without waiting: True if taken, False if someone holds it,
    None if this file system or platform has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK and the like: no flock here
        return None
    return True


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _read_info(fd: int) -> dict | None:
    """The JSON of a lock file (None while it is empty or partly written)."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


class _Other:
    """Somebody else's lock file, opened; ``stale`` is decided on opening."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.info = None
            for _ in range(20):  # only a lock made with O_EXCL can be seen half written
                self.info = _read_info(self.fd)
                if self.info is not None:
                    break
                time.sleep(0.05)
            self.stale = self._judge()
        except BaseException:
            os.close(self.fd)
            raise

    def _judge(self) -> bool:
        info = self.info
        if info is None or info.get("host") != socket.gethostname():
            return False
        if info.get("flock"):
            taken = _flock(self.fd)
            if taken is not None:
                # Holding its flock, make sure the name still points to this file.
                return taken and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        pid = info.get("pid")
        return isinstance(pid, int) and pid > 0 and not _pid_alive(pid)

    def close(self) -> None:
        os.close(self.fd)

    def describe(self) -> str:
        info = self.info
        if info is None:
            return f"an unknown process (unreadable lock file {os.fspath(self.path)!r})"
        split = ""
        if info.get("process_count", 1) != 1:
            split = f" as process {info.get('process_index')} of {info.get('process_count')}"
        me = " (this process)" if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname() else ""
        return (
            f"process {info.get('pid')}{me} on host {info.get('host')!r}{split}, started {info.get('started')} "
            f"(lock file {os.fspath(self.path)!r})"
        )


class DirLock:
    """The lock of one writer on one sweep folder; ``release`` ends it."""

    def __init__(self, out: Path, path: Path, fd: int, alone: bool):
        self.out, self.path, self.fd, self.alone = out, path, fd, alone
        # The file system's time of the lock: a writer that starts after this one's check
        # of the other locks makes its temporary files after it.
        self.mtime_ns = os.fstat(fd).st_mtime_ns

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


def _refuse(out: Path, other: _Other, why: str) -> ValueError:
    same_host = other.info is not None and other.info.get("host") == socket.gethostname()
    if same_host and other.info.get("pid") == os.getpid():
        hint = "wait for that sweep to finish, or use another --out"
    elif same_host or other.info is None:
        hint = "wait for it to finish (or end it), or use another --out"
    else:
        hint = (
            "wait for it to finish, or use another --out; if no sweep runs there any more, "
            f"remove {os.fspath(other.path)!r}"
        )
    if other.info is None:
        hint += f"; if no sweep is running, remove {os.fspath(other.path)!r}"
    return ValueError(f"output folder {os.fspath(out)!r} is {why} {other.describe()}; {hint}")


def _takeover_warning(out: Path, other: _Other, what: str) -> None:
    warnings.warn(
        f"afdjax.sweep: {what} the stale lock of {os.fspath(out)!r} left by {other.describe()}: that process is gone",
        RuntimeWarning,
        stacklevel=5,  # the caller of sweep
    )


def acquire(out: Path, process_index: int, process_count: int, grid_hash: str) -> DirLock:
    """Take ``out/_lock.<process_index>`` or raise ``ValueError`` (see the module docstring).

    ``out`` must exist. Returns the lock; ``lock.alone`` is True when no other live writer
    was seen: then temporary files older than ``lock.mtime_ns`` are leftovers of ended
    runs (a writer that starts later makes its own after that time)."""
    path = out / f"{LOCK_PREFIX}{process_index}"
    try:
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{LOCK_PREFIX}{process_index}.tmp-")
    except OSError as err:
        raise ValueError(f"output folder {os.fspath(out)!r} cannot be written: {err.strerror or err}") from None
    tmp = Path(tmp)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o644)  # other users' sweeps must be able to read who holds it
        has_flock = _flock(fd)
        info = dict(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            process_index=process_index,
            process_count=process_count,
            grid_hash=grid_hash,
            flock=bool(has_flock),
        )
        os.write(fd, json.dumps(info).encode("utf-8"))
        os.fsync(fd)
        fd = _place(out, path, tmp, fd, has_flock)
        tmp = None
        return DirLock(out, path, fd, _check_others(out, path, process_count, grid_hash))
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _place(out: Path, path: Path, tmp: Path, fd: int, has_flock) -> int:
    """Give the written temporary file ``tmp`` the name ``path``: atomically, and only if
    that name is free or holds a stale lock. Returns the descriptor that holds the lock."""
    for _ in range(50):
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise
        except OSError:  # no hard links here: exclusive create, then write
            fd = _place_exclusive(path, tmp, fd, has_flock)
            if fd >= 0:
                return fd
        else:
            tmp.unlink()
            return fd
        try:
            other = _Other(path)
        except FileNotFoundError:  # released meanwhile: try again
            continue
        try:
            if not other.stale:
                raise _refuse(out, other, "being written by")
            os.replace(tmp, path)  # still holding the stale file's flock
            _takeover_warning(out, other, "took over")
            return fd
        finally:
            other.close()
    raise ValueError(f"output folder {os.fspath(out)!r}: could not take {os.fspath(path)!r} (it keeps changing)")


def _place_exclusive(path: Path, tmp: Path, fd: int, has_flock) -> int:
    try:
        new = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileExistsError:
        return -1
    if has_flock:
        _flock(new)
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 65536)
    os.write(new, data)
    os.fsync(new)
    tmp.unlink(missing_ok=True)
    os.close(fd)
    return new


def _check_others(out: Path, mine: Path, process_count: int, grid_hash: str) -> bool:
    """Refuse if another live writer is not a process of the same split of the same sweep;
    remove stale locks that are in the way. Returns whether no other live lock was seen."""
    alone = True
    for p in sorted(out.glob(f"{LOCK_PREFIX}*")):
        if p == mine:
            continue
        try:
            other = _Other(p)
        except FileNotFoundError:
            continue
        try:
            info = other.info or {}
            cooperating = info.get("process_count") == process_count and info.get("grid_hash") == grid_hash
            if other.stale:
                if not cooperating:
                    p.unlink(missing_ok=True)  # still holding its flock
                    _takeover_warning(out, other, "removed")
                continue
            if not cooperating:
                why = "being written by another sweep (a different grid):"
                if info.get("grid_hash") == grid_hash:
                    why = f"being written with a process_count other than {process_count} by"
                raise _refuse(out, other, why)
            alone = False
        finally:
            other.close()
    return alone
