"""One writer per output: an exclusive lock that a second process meets at once.

The lock is the operating system's (`flock`) on a small file: the kernel drops it when its
holder exits, `kill -9` included, so a lock can never outlive the process that took it and
there is nothing stale to clean up by hand. The file holds who took it (pid, host, start
time, command line), which a refused process prints. A folder's lock file is
DIR/.instil.lock, a file's is FILE.lock beside it; both are removed on release.

`output_lock` refuses a second writer at once (an output folder or file: `instil run`,
`merge`, `promote`); `waiting_lock` makes it wait (a cache entry that another process is
making, which the waiter then reads).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from instil.errors import InstilError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

FOLDER_LOCK = ".instil.lock"
# What to do when refused, for the outputs a user names with --out.
WAIT_OR_MOVE = "wait for it to finish or use another --out"

# Lock descriptors this process holds: a forked child (a DataLoader worker) closes its copies,
# so that the lock goes when the holder dies even if a child lives on a moment longer.
_held: set[int] = set()
_fork_hook = False


def folder_lock_file(folder: Path) -> Path:
    return Path(folder) / FOLDER_LOCK


def file_lock_file(file: Path) -> Path:
    file = Path(file)
    return file.with_name(file.name + ".lock")


def holder_record() -> dict[str, object]:
    """Who holds a lock: what a refused process names."""
    argv = getattr(sys, "orig_argv", sys.argv)
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": shlex.join(argv)}


def describe_holder(lock: Path) -> str:
    """The holder as the lock file names it. The holder writes it just after taking the
    lock, so a reader may come a moment too early: it looks again briefly before giving up."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(Path(lock).read_text())
            return (f"pid {holder['pid']} on {holder['host']}, since {holder['started']}: "
                    f"{holder['command']}")
        time.sleep(0.05)
    return f"a process that has not recorded itself in {lock} yet"


def _close_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def _acquire(lock: Path, block: bool) -> int | None:
    """The descriptor of `lock`, locked; None when another process holds it and `block` is
    false. A holder removes the file when it lets go, so a lock taken on a file that is no
    longer the one at `lock` is let go and taken again on the new one."""
    global _fork_hook
    if not _fork_hook:
        os.register_at_fork(after_in_child=_close_in_child)
        _fork_hook = True
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(fd).st_ino:
            _held.add(fd)
            return fd
        os.close(fd)


def _record(fd: int) -> None:
    data = json.dumps(holder_record()).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _release(fd: int, lock: Path) -> None:
    # Removed while still held: whoever opens the old file after this sees that it is gone.
    with contextlib.suppress(OSError):
        os.unlink(lock)
    _held.discard(fd)
    os.close(fd)


def no_locks(what: Path) -> None:
    print(f"instil: warning: file locks are not available on this platform (no fcntl); "
          f"nothing stops another process writing {what} at the same time", file=sys.stderr)


@contextlib.contextmanager
def output_lock(target: Path, lock: Path, advice: str = WAIT_OR_MOVE) -> Iterator[None]:
    """Holds `lock` (the lock file of the folder or file `target`) while the block runs;
    another process holding it is refused at once with one line naming `target`, the holder
    and `advice`. Creates the folder of `lock`."""
    if fcntl is None:
        no_locks(target)
        yield
        return
    try:
        Path(lock).parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(lock, block=False)
    except OSError as e:
        raise InstilError(f"{target}: cannot write the output folder ({e.strerror}); choose "
                          "another --out") from None
    if fd is None:
        raise InstilError(f"{target} is in use by another instil process "
                          f"({describe_holder(lock)}); {advice}")
    try:
        _record(fd)
        yield
    finally:
        _release(fd, lock)


@contextlib.contextmanager
def waiting_lock(lock: Path, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Holds `lock` while the block runs; when another process holds it, calls `on_wait`
    with a description of the holder and waits for it (its death included)."""
    if fcntl is None:
        no_locks(lock)
        yield
        return
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, block=False)
    if fd is None:
        on_wait(describe_holder(lock))
        fd = _acquire(lock, block=True)
    try:
        _record(fd)
        yield
    finally:
        _release(fd, lock)


def folder_lock(folder: Path, advice: str = WAIT_OR_MOVE) -> contextlib.AbstractContextManager:
    """The one-writer lock of an output folder: DIR/.instil.lock."""
    return output_lock(folder, folder_lock_file(folder), advice)


def file_lock(file: Path, advice: str = WAIT_OR_MOVE) -> contextlib.AbstractContextManager:
    """The one-writer lock of an output file: FILE.lock beside it."""
    return output_lock(file, file_lock_file(file), advice)
