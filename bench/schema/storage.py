"""Bytes on disk: bounded reads of a results or metadata file (never a device, FIFO or runaway file), writes
that leave the old file or the new one whole, and a run's paths."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import stat
from pathlib import Path
from typing import IO, Iterator

from bench.schema.errors import ResultsFormatError

# The most a reader reads of a results or metadata file: a device or a runaway file is refused, not read to the end.
MAX_FILE_BYTES = 256 * 2**20
_FILE_KINDS = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a FIFO",
               stat.S_ISSOCK: "a socket"}


def read_file(path: Path, what: str, missing_ok: bool = False) -> bytes | None:
    """The bytes of a results CSV or metadata JSON (``what`` names it in messages); None when it does not exist
    and ``missing_ok``. Only a regular file (a link is followed) of at most MAX_FILE_BYTES is read: a folder,
    device or FIFO is a ResultsFormatError (a FIFO is opened without waiting for a writer, and never read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ResultsFormatError(f"{what} {path} does not exist") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else next(
            (name for test, name in _FILE_KINDS.items() if test(mode)), "a special file")
        link = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise ResultsFormatError(f"{path}{link} is {kind}, not a {what}")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ResultsFormatError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MiB: too large for a {what}")
    return data


def complete_text(path: Path, data: bytes) -> tuple[str, int | None]:
    """The file's text up to its last line break, and the number of the line after it when that line has no
    line break (a row being written, or cut by a kill: no reader takes it for a row), else None. A UTF-8
    byte order mark (Excel writes one) is dropped. ResultsFormatError when it is not UTF-8 text."""
    cut = data.rfind(b"\n") + 1
    try:
        text = data[:cut].decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ResultsFormatError(f"{path} is not a text file: {exc}") from None
    return text, (text.count("\n") + 1 if cut < len(data) else None)


def sync(f: IO) -> None:
    """Flush ``f`` to the disk: what a kill after this leaves is written."""
    f.flush()
    os.fsync(f.fileno())


_TEMPORARY_NUMBERS = itertools.count()
# atomic_write's temporary files: '.<name>.<pid of the writer>-<n>.tmp', beside the file they become
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-(?P<n>\d+)\.tmp")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Write ``path`` whole or not at all: yields a temporary path in the same folder for the caller to write
    (name its format where a writer guesses it from the suffix), then fsyncs it and renames it over ``path``.
    When the caller raises, the temporary file is removed and the old file stays; a kill leaves the old file
    (and at worst a hidden ``.<name>.<pid>-<n>.tmp``). An OSError names ``path``, not the temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{next(_TEMPORARY_NUMBERS)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        if exc.errno is None:
            raise OSError(f"cannot write {path}: {exc}") from exc
        exc.filename, exc.filename2 = str(path), None
        raise


def resolve_results_path(path: str | os.PathLike) -> Path:
    """Accept a run's .csv, its .json, or the path without suffix."""
    path = Path(path)
    if path.suffix == ".json" or (not path.suffix and not path.is_dir()):
        path = path.with_suffix(".csv")
    return path


def metadata_path(path: str | os.PathLike) -> Path:
    """The run metadata (``<run-id>.json``) of a run named as ``resolve_results_path`` accepts it."""
    return resolve_results_path(path).with_suffix(".json")
