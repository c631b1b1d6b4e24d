"""Atomic file writes and bounded reads (issue 7: nothing is lost, every bad input gets a clear answer).

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target: a reader
never sees a half-written file — either the old content or the new one — and an interrupted write
leaves no temporary file behind. A write that the operating system refuses (a folder in the way, no
permission, disk full) becomes one :class:`~tspsim.core.errors.TspsimError` line naming the path.

:func:`read_document` reads a trace or result file (plain or gzip, recognised by its magic bytes) with a
size limit, so a truncated, corrupt or enormous file gives one clear line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import stat
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tspsim.core.errors import TraceError, TspsimError

MAX_DOCUMENT_BYTES = 512 << 20
"""Largest trace or result file read, after decompression (512 MiB). Parsing JSON takes about six times
its size in memory (Python objects), so this bounds a read to a few GB; the largest graph a run may build
(:data:`tspsim.schedules.context.MAX_GRAPH_OPS` ops, ~200–300 bytes of JSON each) fits under it."""
READ_CHUNK_BYTES = 16 << 20
"""Reads proceed in chunks of this size (a single ``read(limit)`` would reserve the whole limit up front)."""

_GZIP_MAGIC = b"\x1f\x8b"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    Raises:
        TspsimError: the file cannot be written (the message names the path and the reason).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except (FileExistsError, NotADirectoryError):
        blocker = next((a for a in reversed(path.parents) if a.exists() and not a.is_dir()), path.parent)
        raise TspsimError(f"cannot write {path}: {blocker} is a file, not a folder") from None
    except OSError as exc:
        raise TspsimError(f"cannot write {path}: {_reason(exc)}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise TspsimError(f"cannot write {path}: {_reason(exc)}") from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write text atomically; gzip-compressed (deterministically, mtime 0) when the name ends in ``.gz``."""
    data = text.encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    write_bytes_atomic(Path(path), data)


def _reason(exc: OSError) -> str:
    if isinstance(exc, IsADirectoryError):
        return "it is a folder; give a file name"
    return exc.strerror or str(exc)


class FileShapeError(Exception):
    """A file that is not a regular file (a device, a FIFO, a folder) or is larger than the limit.

    Callers turn it into their own one-line error (:class:`~tspsim.core.errors.ConfigError` for YAML,
    :class:`~tspsim.core.errors.TraceError` for traces and result files); the message is the reason only.
    """


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of ``path``, refusing anything but a regular file before reading a byte.

    The file is opened non-blocking (a FIFO would otherwise wait forever for a writer) and checked with
    ``fstat`` on the open descriptor (no window between the check and the read); ``/dev/zero``,
    ``/dev/urandom``, FIFOs, sockets and folders are refused (their size says nothing about what a read
    returns).

    Raises:
        FileShapeError: not a regular file.
        OSError: the file cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                    if stat.S_ISSOCK(mode) else "not a regular file")
            raise FileShapeError(f"it is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file.

    Raises:
        FileShapeError: not a regular file, or longer than ``limit`` bytes (whatever ``st_size`` says).
        OSError: the file cannot be opened or read.
    """
    with open(open_regular(path), "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileShapeError(f"it is larger than {limit:,} bytes (the limit)")
    return data


def _read_chunks(fh: Any, most: int) -> bytes:
    """Up to ``most`` bytes of ``fh``, read chunk by chunk (memory grows with what the file really holds)."""
    parts: list[bytes] = []
    total = 0
    while total < most:
        chunk = fh.read(min(READ_CHUNK_BYTES, most - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


def read_document(path: str | Path, what: str, limit: int = MAX_DOCUMENT_BYTES) -> str:
    """Text of a trace or result file, gunzipped when it starts with the gzip magic bytes.

    Args:
        path: the file.
        what: ``"trace"`` or ``"result file"``, for messages.
        limit: largest (decompressed) size accepted, in bytes.

    Raises:
        TraceError: one line naming the file: missing, unreadable, corrupt gzip, too large, not UTF-8.
    """
    p = Path(path)
    try:
        with open(open_regular(p), "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=fh) as gz:
                    data = _read_chunks(gz, limit + 1)
            else:
                data = _read_chunks(fh, limit + 1)
    except FileNotFoundError:
        raise TraceError(f"{p}: {what} not found") from None
    except FileShapeError as exc:
        raise TraceError(f"{p}: cannot read {what}: {exc}; give the path of a {what}") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise TraceError(f"{p}: corrupt or truncated gzip data ({exc or type(exc).__name__}); "
                         f"the {what} may be cut short") from None
    except OSError as exc:
        raise TraceError(f"{p}: cannot read {what} ({_reason(exc)})") from None
    if len(data) > limit:
        packed = " once decompressed" if head == _GZIP_MAGIC else ""
        raise TraceError(f"{p}: {what} is larger than {limit:,} bytes{packed} (the limit: reading it would take "
                         f"about {6 * limit / 1e9:.0f} GB of memory); is this the right file? A smaller run "
                         "(folded, fewer GPUs or layers) writes a smaller one")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceError(f"{p}: byte {exc.start} is not UTF-8 text; a {what} is JSON text "
                         "(optionally gzip-compressed)") from None


_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
"""Names :func:`write_bytes_atomic` gives its temporary files (``.NAME.<8 random>.tmp``)."""


def remove_stale_temp_files(folder: Path) -> int:
    """Delete the temporary files an interrupted atomic write left in ``folder`` (SIGKILL skips the cleanup).

    Only call it while holding the folder's :func:`folder_lock`: then no other writer can own them.
    Returns the number removed.
    """
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        if _TEMP_NAME.match(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, flag: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (its ``.tspsim.lock`` file) for the duration of the block.

    The lock is ``flock``-based: the operating system releases it when the process ends, however it
    ends (SIGKILL included), so a stale lock never blocks a later run. A second process asking for a
    folder that is locked gets one line instead of mixing its outputs with the first one's.

    Args:
        folder: the output folder (created if missing).
        what: the command, for the message (``a sweep``).
        flag: the option that named the folder, for the message (``--out``).

    Raises:
        TspsimError: another process holds the lock, or the lock file cannot be created.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    path = Path(folder) / ".tspsim.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise TspsimError(f"cannot lock {folder}: {_reason(exc)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise TspsimError(f"{folder}: {what} is already writing there{who}; wait for it to finish, or give "
                              f"another {flag}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _identity(path: str | Path) -> tuple[str, object]:
    """What two spellings of one file share: (device, inode) when it exists, else its resolved path."""
    try:
        st = os.stat(path)
        return ("inode", (st.st_dev, st.st_ino))
    except OSError:
        return ("path", os.path.realpath(path))


def check_outputs_distinct(inputs: dict[str, str | Path | None], outputs: dict[str, str | Path | None]) -> None:
    """Refuse a command whose output would replace one of its inputs, or two outputs that are one file.

    Args:
        inputs: option (``TRACE``, ``--topology``) → the file it read (None or a non-file, e.g. a preset
            name, is skipped).
        outputs: option (``--save``) → the file it will write (None: not written).

    Raises:
        TspsimError: naming both options and the file.
    """
    seen: dict[tuple[str, object], str] = {}
    for flag, path in inputs.items():
        if path is not None and Path(path).is_file():
            seen.setdefault(_identity(path), flag)
    for flag, path in outputs.items():
        if path is None:
            continue
        ident = _identity(path)
        if ident in seen:
            other = seen[ident]
            if other in inputs:
                raise TspsimError(f"{flag} {path} is the {other} file this command reads; writing it would replace "
                                  f"it: give {flag} another path")
            raise TspsimError(f"{flag} {path} is also the {other} output; give each output its own path")
        seen[ident] = flag

