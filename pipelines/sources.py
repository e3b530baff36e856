"""SOURCES arguments -> the list of media inputs to extract, with per-input metadata.

A SOURCE is a media file, a directory (searched recursively by extension: video or image extensions, by the
kind of run), a glob, or a list file:
``.txt`` (one path per line), ``.csv`` / ``.jsonl`` (a path column plus any metadata columns). Paths may
be local or fsspec URLs (``s3://``, ``gs://``, ``https://`` ...); relative paths inside a list file are
resolved against the list file's folder, so a dataset folder can be moved as a whole.

A path that exists is taken literally, glob characters and all (``video [2020].mp4`` is a file); only a
path that does not exist is expanded as a glob. In a ``.txt`` list, a line whose first non-blank character
is ``#`` is a comment (a file whose name starts with ``#`` is given as ``./#name``); ``.csv`` / ``.jsonl``
rows have no comments.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import os
import posixpath
import shutil
import tempfile
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

import fsspec

from lamflow.contract import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from lamflow.errors import LamflowError
from lamflow.fileio import parse_jsonl

MEDIA_EXTENSIONS = {"video": VIDEO_EXTENSIONS, "image": IMAGE_EXTENSIONS}  # by the run's kind (settings.kind)
LIST_EXTENSIONS = (".txt", ".csv", ".jsonl")
# Accepted names of the column holding the media path in .csv / .jsonl list files, in priority order.
PATH_COLUMNS = ("path", "source", "video_path", "file", "filename", "url")
_GLOB_CHARS = "*?["
COMMENT = "#"  # starts a comment line in .txt lists (documented in `lamflow extract --help`)


class SourceError(LamflowError, ValueError):
    """A SOURCES argument that cannot be turned into media inputs (message names it and the fix)."""


class Source:
    """One media input: ``path`` (local absolute path or fsspec URL), ``name`` (its path relative to the
    directory, glob or list file it came from, without the media extension: annotations join on it),
    ``key_name`` (the same path WITH its extension, or a list file's ``key`` column: its sample key is made
    from it, so ``clip.mp4`` and ``clip.mkv`` side by side get two keys) and metadata from a list file.

    The names are worked out when asked for: a resume over 10^7 listed inputs needs only their paths.
    Two sources are equal when their paths are."""

    __slots__ = ("path", "metadata", "_base", "_key")

    def __init__(self, path: str, base: str | None = None, key: str | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.path = path
        self.metadata = metadata or {}
        self._base = base  # the folder it was found under (None: a file given by itself)
        self._key = key  # a list file's key column: name and key_name both

    @property
    def key_name(self) -> str:
        return self._key if self._key is not None else _relative_path(self.path, self._base)

    @property
    def name(self) -> str:
        return self._key if self._key is not None else _stem(_relative_path(self.path, self._base))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Source) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"Source({self.path!r}, name={self.name!r})"


def _stem(path: str) -> str:
    """``path`` without the extension of its last component (``a/movie.part1.mp4`` -> ``a/movie.part1``)."""
    head, _, base = path.rpartition("/")
    stem, dot, _ = base.rpartition(".")
    base = stem if dot and stem else base
    return f"{head}/{base}" if head else base


def _relative_path(path: str, base: str | None) -> str:
    """``path`` relative to ``base``; the file name when there is no base or ``path`` lies outside it."""
    path = (urlsplit(path).path if is_url(path) else path).replace("\\", "/").rstrip("/")
    if base is not None:
        base = (urlsplit(base).path if is_url(base) else base).replace("\\", "/").rstrip("/")
        if base and not path.startswith(base + "/"):  # outside base (relpath would begin with ../)
            return posixpath.basename(path)
        if base and "/." not in path:  # inside, nothing to normalise: relpath's answer, without its cost
            return path[len(base) + 1:]
        relative = posixpath.relpath(path, base) if base else path.lstrip("/")
        if not relative.startswith("../") and relative not in (".", ".."):
            return relative
    return posixpath.basename(path)


def source_name(path: str, base: str | None = None) -> str:
    """The name of the input at ``path`` found under ``base``: the relative path without its extension;
    the file name without its extension when there is no base or ``path`` lies outside it."""
    return _stem(_relative_path(path, base))


def _glob_base(pattern: str) -> str:
    """The folder a glob searches from: its leading components without glob characters."""
    parts = pattern.split("/")
    first_magic = next(i for i, part in enumerate(parts) if any(c in part for c in _GLOB_CHARS))
    return "/".join(parts[:first_magic])


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _normalise(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://"):]
    return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def _join(base_dir: str, path: str) -> str:
    """Resolve ``path`` from a list file located in ``base_dir`` (absolute paths and URLs pass through)."""
    if is_url(path) or path.startswith("file://") or os.path.isabs(os.path.expanduser(path)):
        return _normalise(path)
    return posixpath.join(base_dir, path) if is_url(base_dir) else _normalise(os.path.join(base_dir, path))


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(path)


def _as_source_path(fs: fsspec.AbstractFileSystem, found: str, like: str) -> str:
    return fs.unstrip_protocol(found) if is_url(like) else _normalise(found)


def _has_extension(path: str, extensions: Sequence[str]) -> bool:
    return path.lower().endswith(tuple(e.lower() for e in extensions))


def _other_kind_hint(files: Sequence[str], extensions: Sequence[str]) -> str:
    """A hint for a directory searched for one kind of media that holds the other kind."""
    for kind, kind_extensions in MEDIA_EXTENSIONS.items():
        if not set(kind_extensions) & set(extensions) and any(_has_extension(f, kind_extensions) for f in files):
            return f" but holds {kind} files (pass --media {kind} to extract them)"
    return ""




def _path_column(columns: Sequence[str], list_file: str) -> str:
    for name in PATH_COLUMNS:
        if name in columns:
            return name
    raise SourceError(
        f"list file {list_file!r} has no path column; name one of its columns {list(PATH_COLUMNS)} "
        f"(found columns: {list(columns)})"
    )


def _lines_of_list_file(list_file: str) -> Iterator[str]:
    """The paths of a .txt list, streamed (a list of 10^7 inputs is never held as one text)."""
    with fsspec.open(list_file, "rt", encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith(COMMENT):
                yield line


def _rows_of_list_file(list_file: str) -> Iterator[dict[str, Any]]:
    """The rows of a .csv / .jsonl list, streamed."""
    with fsspec.open(list_file, "rt", encoding="utf-8", newline="") as handle:
        if list_file.lower().endswith(".csv"):
            yield from csv.DictReader(handle)
        else:
            yield from (row for _, row in parse_jsonl(handle, list_file))


def _expand_list_file(list_file: str) -> Iterator[Source]:
    base_dir = posixpath.dirname(list_file) if is_url(list_file) else os.path.dirname(list_file)
    txt = list_file.lower().endswith(".txt")
    local_base = not is_url(base_dir)
    if txt:  # the common huge case (10^7 lines), kept lean: no metadata, no column lookup
        for line in _lines_of_list_file(list_file):
            # an absolute local path needs only normalising (what abspath does to it), not _join's checks
            yield Source(posixpath.normpath(line) if local_base and line[0] == "/" else _join(base_dir, line), base_dir)
        return
    for number, row in enumerate(_rows_of_list_file(list_file), start=1):
        column = _path_column(list(row), list_file)
        value = row[column]
        if not isinstance(value, str) or not value.strip():
            raise SourceError(f"{list_file}: row {number} has an empty {column!r} value; give a media path")
        metadata = {k: v for k, v in row.items() if k != column}
        key = metadata.get("key")
        yield Source(_join(base_dir, value.strip()), base_dir, None if key in (None, "") else str(key), metadata)


def _expand_one(spec: str, extensions: Sequence[str]) -> Iterator[Source]:
    path = _normalise(spec)
    fs, root = _fs(path)
    if any(c in spec for c in _GLOB_CHARS) and not fs.exists(root):
        found = sorted(p for p in fs.glob(root) if not fs.isdir(p))
        if not found:
            raise SourceError(f"glob {spec!r} matched no files and no file has that exact name; check the pattern "
                              "(quote it so the shell leaves it)")
        base = _glob_base(path)
        return (Source(p, base) for p in (_as_source_path(fs, f, path) for f in found))
    if not fs.exists(root):
        raise SourceError(f"source {spec!r} does not exist; give a media file, a directory, a glob or a list file")
    if fs.isdir(root):
        files = fs.find(root)
        found = sorted(p for p in files if _has_extension(p, extensions))
        if not found:
            raise SourceError(
                f"directory {spec!r} holds no files with a media extension {list(extensions)}"
                f"{_other_kind_hint(files, extensions)}; pass --extensions to widen the search"
            )
        return (Source(p, path) for p in (_as_source_path(fs, f, path) for f in found))
    if _has_extension(path, LIST_EXTENSIONS):
        return _expand_list_file(path)
    return iter([Source(path)])


def expand_sources(specs: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Source]:
    """Expand SOURCES arguments into unique media inputs, in argument order (each argument sorted).

    A spec that exists is taken literally; one that does not and holds ``*?[`` is a glob. The same
    media path reached twice (say, a directory and a glob inside it) is kept once, with the
    metadata of its first appearance. Raises :class:`SourceError` for a missing path, an empty glob or
    directory, or a list file without a path column.
    """
    seen: dict[str, Source] = {}
    for source in iter_sources(specs, extensions):
        seen.setdefault(source.path, source)
    return list(seen.values())


def iter_sources(specs: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> Iterator[Source]:
    """The inputs of SOURCES as :func:`expand_sources` finds them, streamed and NOT de-duplicated (a path
    reached twice comes twice): a run over 10^7 inputs de-duplicates by hash instead of holding every path.
    A missing path, an empty glob or folder raises here, before anything is read (a list file's rows are
    checked as they stream)."""
    if not specs:
        raise SourceError("no SOURCES given; pass media files, directories, globs or list files")
    return itertools.chain.from_iterable([_expand_one(spec, extensions) for spec in specs])


@contextlib.contextmanager
def local_copy(source: str) -> Iterator[str]:
    """Yield a local path for ``source``: local files as-is, URLs staged to a temporary file.

    ffmpeg reads local files; staging keeps the decoder ignorant of object stores, and the copy is
    deleted afterwards so a worker's disk holds one staged video per task at most.
    """
    if not is_url(source):
        yield source
        return
    suffix = os.path.splitext(posixpath.basename(source.split("?", 1)[0]))[1]
    handle, staged = tempfile.mkstemp(prefix="lamflow-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as target, fsspec.open(source, "rb") as remote:
            shutil.copyfileobj(remote, target, length=4 << 20)
        yield staged
    finally:
        os.unlink(staged)
