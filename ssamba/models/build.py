"""Compile the fused C++ CPU kernels now (else they are compiled on first use) or check the cached build.

examples:
  ssamba build                                    # build (a few minutes), or confirm the cached build
  TORCH_EXTENSIONS_DIR=/scratch/ext ssamba build  # build into another cache directory
  ssamba build --wait 60                          # wait at most 60 s for another process's build

The kernels are cached in torch's extension directory ($TORCH_EXTENSIONS_DIR, default
~/.cache/torch_extensions); `shell/env.sh` runs this once after installing. A build holds a lock
file that records its process id, host and start time; a process that finds the lock held says
whose it is and waits (at most $SSAMBA_BUILD_WAIT_S seconds, default 1800), and a lock whose owner
is gone (a build killed by a time limit or a closed terminal) is cleared. Exit status 1 when the
kernels cannot be built here (no compiler, a compile error); the `chunked` scan is then used.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUILD_LOCK_FILE = "ssamba-build.lock"
"""Our lock in the build directory: held (flock) for the whole build or load, records its owner."""
TORCH_LOCK_FILE = "lock"
"""torch.utils.cpp_extension's lock (a bare file, no owner); left behind when a build is killed."""
WAIT_ENV = "SSAMBA_BUILD_WAIT_S"
DEFAULT_WAIT_S = 1800.0
POLL_S = 0.25
PROGRESS_EVERY_S = 30.0
SLOW_LOAD_NOTICE_S = 5.0
"""A load of a build believed current that takes longer than this is announced (it is rebuilding)."""


class BuildLockTimeout(RuntimeError):
    """Another live process held the build lock for longer than we were allowed to wait."""


def notice(message: str) -> None:
    """One progress line on stderr (builds are announced even when stdout is redirected)."""
    print(f"[ssamba] {message}", file=sys.stderr, flush=True)


def build_wait_seconds() -> float:
    """How long to wait for another process's build: ``$SSAMBA_BUILD_WAIT_S`` or 30 minutes."""
    value = os.environ.get(WAIT_ENV)
    if not value:
        return DEFAULT_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"${WAIT_ENV} must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ValueError(f"${WAIT_ENV} must be >= 0, got {value!r}")
    return seconds


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def processes_holding(path: Path) -> list[int] | None:
    """Ids of this host's processes that have ``path`` open (Linux ``/proc``); None where unknown."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = os.path.realpath(path)
    holders = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # processes come and go; others' fds are unreadable
            if any(os.readlink(fd) == target for fd in (entry / "fd").iterdir()):
                holders.append(int(entry.name))
    return holders


@dataclass(frozen=True)
class LockOwner:
    """Who holds (or last held) a build lock."""

    pid: int
    host: str
    started: float

    def describe(self) -> str:
        age = max(0.0, time.time() - self.started)
        when = time.strftime("%H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host} (started {when}, {age:.0f} s ago)"

    def gone(self) -> bool:
        """True when the owner ran on this host and its process no longer exists."""
        return self.host == socket.gethostname() and not process_alive(self.pid)


class BuildLock:
    """An exclusive lock between processes (``flock`` on ``path``) that records its owner.

    The kernel releases a ``flock`` when its process dies, so a killed build never blocks the next
    one; the recorded pid, host and start time name the owner in messages, and a lock file whose
    recorded owner is gone while the lock still looks held (kept by an orphaned child) is replaced.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def owner(self) -> LockOwner | None:
        """The recorded owner, or None when the file is missing, empty or unreadable."""
        try:
            record = json.loads(self.path.read_text())
            return LockOwner(int(record["pid"]), str(record["host"]), float(record["started"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; returns whether we hold it now."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # not unlinked by a previous holder between our open and flock
                break
            os.close(fd)
        previous = self.owner()
        if previous is not None and previous.pid != os.getpid():
            notice(f"cleared a stale build lock {self.path}: its owner, {previous.describe()}, is gone")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        self._fd = fd
        return True

    def acquire(self, wait_s: float, what: str) -> None:
        """Take the lock, waiting at most ``wait_s`` seconds for a live owner (saying so every 30 s);
        BuildLockTimeout after that."""
        start = time.monotonic()
        next_notice = 0.0
        while not self.try_acquire():
            owner = self.owner()
            if owner is not None and owner.gone():  # flock kept by an orphaned child of a dead owner
                notice(f"replacing the build lock {self.path}: its owner, {owner.describe()}, is gone")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            holder = owner.describe() if owner is not None else "another process"
            elapsed = time.monotonic() - start
            if elapsed >= wait_s:
                raise BuildLockTimeout(
                    f"{what} is locked by {holder}; gave up after waiting {elapsed:.0f} s "
                    f"(lock file {self.path}; ${WAIT_ENV} sets the wait)"
                )
            if elapsed >= next_notice:
                notice(
                    f"waiting for {what} by {holder} ({elapsed:.0f} s so far, at most {wait_s:.0f} s; lock file {self.path})"
                )
                next_notice = elapsed + PROGRESS_EVERY_S
            time.sleep(POLL_S)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before unlocking: a waiter that opened this inode retries
        os.close(self._fd)
        self._fd = None


def clear_stale_torch_lock(build_dir: Path, wait_s: float) -> None:
    """Remove torch's extension ``lock`` file when no process holds it (call with :class:`BuildLock` held).

    Every ssamba build takes our lock first, so torch's lock found while we hold ours is either
    left by a killed build (removed here, with a message) or held open by a process that loads the
    extension without ssamba's lock (waited for, at most ``wait_s`` seconds).
    """
    lock = build_dir / TORCH_LOCK_FILE
    start = time.monotonic()
    next_notice = 0.0
    while lock.exists():
        holders = processes_holding(lock)
        if not holders:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            notice(f"removed the stale build lock {lock} (left by an interrupted build; no process holds it)")
            return
        elapsed = time.monotonic() - start
        if elapsed >= wait_s:
            raise BuildLockTimeout(
                f"torch's build lock {lock} is held by pid {holders[0]}; gave up after waiting {elapsed:.0f} s"
            )
        if elapsed >= next_notice:
            notice(f"waiting for pid {holders[0]}, which holds torch's build lock {lock} ({elapsed:.0f} s so far)")
            next_notice = elapsed + PROGRESS_EVERY_S
        time.sleep(POLL_S)


@contextlib.contextmanager
def build_progress(what: str, directory: Path, expected: bool) -> Iterator[None]:
    """Report a build on stderr: at its start when ``expected`` (else once it takes over 5 s), every
    30 s while it runs, and at its end with the elapsed time."""
    start = time.monotonic()
    done = threading.Event()
    announced = threading.Event()

    def announce() -> None:
        announced.set()
        notice(f"compiling {what} into {directory} (first use or changed sources: takes minutes, once)")

    def report() -> None:
        if not expected and done.wait(SLOW_LOAD_NOTICE_S):
            return
        if not expected:
            announce()
        while not done.wait(PROGRESS_EVERY_S):
            notice(f"still compiling {what}: {time.monotonic() - start:.0f} s")

    if expected:
        announce()
    reporter = threading.Thread(target=report, name="ssamba-build-progress", daemon=True)
    reporter.start()
    try:
        yield
    except BaseException:
        done.set()
        if announced.is_set():
            notice(f"compiling {what} failed after {time.monotonic() - start:.0f} s")
        raise
    finally:
        done.set()
        reporter.join()
    if announced.is_set():
        notice(f"compiled {what} in {time.monotonic() - start:.0f} s")


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", type=float, default=None,
        help=f"seconds to wait for another process's build (default ${WAIT_ENV} or {DEFAULT_WAIT_S:.0f})",
    )


def main(args: argparse.Namespace) -> int:
    from ssamba.models import fused_scan

    if args.wait is not None:
        os.environ[WAIT_ENV] = str(args.wait)
    start = time.monotonic()
    reason = fused_scan.fused_status()
    if reason is not None:
        print(f"fused CPU kernels unavailable: {reason}; the 'chunked' scan will be used", file=sys.stderr)
        return 1
    isas = ", ".join(fused_scan.fused_kernel_isas())
    print(f"fused CPU kernels ready in {fused_scan.fused_build_directory()} ({time.monotonic() - start:.1f} s; ISAs: {isas})")
    return 0
