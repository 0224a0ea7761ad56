"""Files that are never half-written: checked appends, atomic replacement, cell claims.

Every file tlbench writes goes through this module:

- :func:`append_line` adds one line to an append-only file (``records.jsonl``): opened
  with ``O_NOFOLLOW``, refused unless it is a regular file, written with a loop that
  checks every byte, fsynced; on any failure the file is cut back to its previous size,
  so every earlier line survives byte for byte.
- :func:`atomic_write` replaces a whole file (BENCHMARKS.md, PNGs, bench JSON, caches):
  a temporary file in the same directory, fsynced, then renamed over the target, so a
  reader (or a crash, a full disk, ``kill -9``) sees the old file or the new one.
- :class:`Claims` lets concurrent runs on one run directory split its cells: a cell is
  trained only by the process holding its byte-range lock (``fcntl.lockf``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

from tlbench.api.errors import TlbenchError

LOCK_FILE = ".tlbench.lock"  # in a run directory: the claims of the runs using it

Content = Union[bytes, str, Callable[[BinaryIO], object]]


class OutputWriteError(TlbenchError):
    """A write failed (disk full, I/O error): nothing half-written is left; exit code 1."""

    exit_code = 1


class UnsafePathError(TlbenchError):
    """A symbolic link or a non-regular file where tlbench keeps its results (exit 2)."""


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def write_all(fd: int, data: bytes) -> int:
    """``os.write`` until every byte is written; a short write is retried, an error raised."""
    view, done = memoryview(data), 0
    while done < len(data):
        written = os.write(fd, view[done:])
        if written <= 0:  # POSIX says a regular file never does this; never loop forever
            raise OSError(errno.EIO, "write wrote nothing")
        done += written
    return done


def open_regular(path: Path, flags: int, what: str = "records file") -> int:
    """``os.open`` that never follows a symlink, never blocks on a FIFO and refuses
    anything but a regular file."""
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(_symlink_message(path, what)) from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):  # a directory; a FIFO without reader
            raise UnsafePathError(_not_regular_message(path, what, os.lstat(path))) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafePathError(_not_regular_message(path, what, os.lstat(path)))
    return fd


def check_regular_or_absent(path: Path, what: str) -> None:
    """Raise :class:`UnsafePathError` if ``path`` exists and is not a plain regular file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        return  # an ancestor is a file: the directory checks report that
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(_symlink_message(path, what))
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(_not_regular_message(path, what, info))


def _symlink_message(path: Path, what: str) -> str:
    return (
        f"{path} is a symbolic link; tlbench never follows links for its {what}: replace "
        "it with a regular file or choose another --output / --run-name."
    )


def _not_regular_message(path: Path, what: str, info: os.stat_result) -> str:
    kind = _kind(info.st_mode)
    return (
        f"{path} is a {kind}, not a regular file; tlbench keeps its {what} only in regular "
        "files: move it away or choose another --output / --run-name."
    )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symbolic link"),
    ):
        if test(mode):
            return name
    return "special file"


def append_line(path: Path, line: bytes, what: str = "records file") -> None:
    """Append ``line`` (ending in a newline) whole, or leave the file as it was."""
    fd = open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, what)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            line = b"\n" + line  # a torn last line (kill -9): the new record starts fresh
        try:
            write_all(fd, line)
            os.fsync(fd)
        except BaseException as exc:  # OSError, or a signal between two writes
            os.ftruncate(fd, start)  # every earlier line kept byte for byte
            if isinstance(exc, OSError):
                raise OutputWriteError(
                    f"could not append to {path}: {_why(exc)}; the new record was not stored "
                    f"and every earlier record in it is kept as it was (the file is back to "
                    f"{start:,} bytes). Free space and run the same command again: recorded "
                    "cells are skipped."
                ) from None
            raise
    finally:
        os.close(fd)


def atomic_write(path: Union[str, os.PathLike], content: Content) -> Path:
    """Replace ``path`` with ``content`` (bytes, text, or a function writing to a binary
    handle) through a fsynced temporary file and a rename: all or nothing."""
    path = Path(path)
    data = _bytes(content)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputWriteError(f"could not write {path}: {_why(exc)}.") from None
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        raise OutputWriteError(
            f"could not write {path}: {_why(exc)}; "
            + ("the previous file is kept as it was." if path.exists() else "nothing written.")
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _bytes(content: Content) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode("utf-8")
    buffer = io.BytesIO()
    content(buffer)
    return buffer.getvalue()


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Claims:
    """Per-cell locks in one run directory, so two runs never train the same cell.

    One lock file holds a byte-range lock per claimed cell (offset from its config hash).
    POSIX locks belong to the process and vanish when it dies, so a crashed run never
    leaves a stale claim.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[bool]:
        """True while this process holds ``key``; False if another process does."""
        fd, offset = self._open(), int(key[:12], 16) if _is_hex(key[:12]) else hash(key) % 2**40
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, "lock file")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)
