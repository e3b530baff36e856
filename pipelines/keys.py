"""Safe, unique sample keys for WebDataset shards.

webdataset splits a tar member name at its FIRST dot into key and field, so a key must never contain a
dot; slashes would create directories and spaces break shell globs. The contract (FORMATS.md) allows
``[A-Za-z0-9_-]``. Consumers that need to join annotations to samples (e.g. a QVHighlights ``vid`` such
as ``NUsG9BgSes0_210.0_360.0``) apply the same :func:`safe_key` to their ids.
"""
from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata
from typing import Iterable, Mapping
from urllib.parse import urlsplit

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_LENGTH = 120  # keeps tar member names (key + ".video_ts.npy") well under filesystem limits
_SUFFIX_HEX = 8


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def safe_key(name: str) -> str:
    """Map any name to a key of ``[A-Za-z0-9_-]`` characters, one ``_`` per unsafe character.

    Accents are folded first (``café`` -> ``cafe``) so Latin names stay readable; every other unsafe
    character (dots, spaces, slashes, CJK ...) becomes ``_``. Over-long names are cut and given a digest
    of the full name so two long names sharing a prefix stay distinct.
    """
    folded = "".join(c for c in unicodedata.normalize("NFKD", name) if unicodedata.category(c) != "Mn")
    key = _UNSAFE.sub("_", folded) or "video"
    if len(key) > MAX_KEY_LENGTH:
        key = f"{key[: MAX_KEY_LENGTH - _SUFFIX_HEX - 1]}-{_digest(name)[:_SUFFIX_HEX]}"
    return key


def source_name(source: str) -> str:
    """The human name of a source: its file name without the last extension (works for URLs too)."""
    path = urlsplit(source).path if "://" in source else source.replace("\\", "/")
    base = posixpath.basename(path.rstrip("/"))
    stem, dot, _ = base.rpartition(".")
    return stem if dot and stem else base


def assign_keys(named_sources: Iterable[tuple[str, str]], taken: Mapping[str, str] | None = None) -> dict[str, str]:
    """Give every source a unique safe key; returns {source: key}.

    ``named_sources`` are (source, preferred name) pairs; ``taken`` maps sources to keys fixed by earlier
    runs (from the manifest) — those are kept, so resuming never renames a sample. Among new sources the
    first in sorted-source order gets the plain key; later ones with the same key get ``-`` plus a digest
    of their source, which depends only on the source, so the result does not depend on input order.
    """
    taken = dict(taken or {})
    used = set(taken.values())
    keys: dict[str, str] = {}
    for source, name in sorted(named_sources):
        if source in taken:
            keys[source] = taken[source]
            continue
        if source in keys:
            continue
        base = safe_key(name)
        key = base
        digest = _digest(source)
        width = _SUFFIX_HEX
        while key in used:
            # Lengthen the digest until free: only fails for a true SHA-1 collision of two sources.
            if width > len(digest):
                raise ValueError(f"cannot find a unique key for source {source!r} (base key {base!r})")
            key = f"{base[: MAX_KEY_LENGTH - width - 1]}-{digest[:width]}"
            width += 4
        used.add(key)
        keys[source] = key
    return keys
