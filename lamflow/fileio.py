"""Small file helpers shared by every folder: JSONL reading with ``file:line`` errors, atomic writes, and
file fingerprints.

Atomic writes go to ``.NAME.tmp`` beside the target (hidden, so no glob for ``*.tar``, ``*.json`` or
``step-*.pt`` ever matches a half-written file), are fsynced, then renamed over the target and the
directory is fsynced: a reader sees the old file or the new one, never half of one, and a crash of the
process or of the machine leaves at most a stale ``.NAME.tmp`` that the next write replaces. (A rename is
durable only once its directory is synced, and it may reach the disk before the file's data unless that
was synced first; a folder created for such files is synced into its parent too.)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from lamflow.errors import DataFileError


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (checkpoints are recorded by it in provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


TEMP_SUFFIX = ".tmp"


def temp_path(path: str | Path) -> Path:
    """Where :func:`atomic_open` (and every other writer that renames into place) writes ``path`` first."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def final_path(temp: str | Path) -> Path | None:
    """The file a :func:`temp_path` stands for (``.x.json.tmp`` -> ``x.json``), or None for another name."""
    temp = Path(temp)
    name = temp.name
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX) and len(name) > 1 + len(TEMP_SUFFIX)):
        return None
    return temp.with_name(name[1: -len(TEMP_SUFFIX)])


def fsync_path(path: str | Path) -> None:
    """Flush what the page cache holds of a file or directory to the disk. Linux syncs through a read-only
    descriptor too, which is the only kind a directory opens as."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename, creation or deletion inside ``path`` durable (POSIX needs the directory itself synced)."""
    fsync_path(path)


def mkdir_durable(path: str | Path) -> Path:
    """Create folder ``path`` and its missing parents so that they survive a machine crash: each created
    folder is synced into its parent (files committed inside a folder whose own entry is lost are lost)."""
    path = Path(path)
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for folder in reversed(missing):
        fsync_dir(folder.parent)
    return path


def commit_temp(path: str | Path) -> Path:
    """Move a finished :func:`temp_path` file over ``path`` durably: its data is synced first (h5py,
    torch.save and ffmpeg close their files without), then the rename and the directory. For writers that
    need a path of their own rather than :func:`atomic_open`'s handle; a file synced already costs little."""
    path = Path(path)
    temporary = temp_path(path)
    fsync_path(temporary)
    os.replace(temporary, path)
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that it appears complete or not at all (see the module docstring).

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. The parent folder is created. If the block raises,
    the temporary file is removed and the target is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    mkdir_durable(path.parent)
    temporary = temp_path(path)
    try:
        with open(temporary, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
        commit_temp(path)  # syncs the closed file, then renames
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Pretty, key-sorted JSON (``allow_nan=False``: NaN is not JSON and other readers reject it)."""
    with atomic_open(path) as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any], sort_keys: bool = False) -> Path:
    """One JSON value per line, streamed (millions of rows never become one string)."""
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=sort_keys, allow_nan=False) + "\n")
    return Path(path)


def _text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFileError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise DataFileError(f"{path}: is a directory; expected a {what}") from None
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); expected a {what}") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """One JSON document; a missing or malformed file is a :class:`DataFileError` naming it."""
    path = Path(path)
    try:
        return json.loads(_text(path, what))
    except json.JSONDecodeError as error:
        raise DataFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg} at column {error.colno})") from None


def iter_jsonl(path: str | Path, what: str = "JSONL file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON-lines file.

    Every line must hold one JSON object: anything else is a :class:`DataFileError` quoting ``file:line``.
    """
    path = Path(path)
    return parse_jsonl(_text(path, what), str(path))


def parse_jsonl(text: str | Iterable[str], source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of JSON-lines ``text`` (a string, or its lines, e.g. an
    open file streamed) read from ``source`` (named in errors), for text that did not come from a local file
    (e.g. an fsspec URL)."""
    for number, line in enumerate(text.splitlines() if isinstance(text, str) else text, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFileError(f"{source}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise DataFileError(f"{source}:{number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def read_jsonl(path: str | Path, what: str = "JSONL file") -> list[dict[str, Any]]:
    """Every object of a JSON-lines file (see :func:`iter_jsonl`)."""
    return [record for _, record in iter_jsonl(path, what)]
