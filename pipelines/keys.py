"""Sample keys of a run: each input's key comes from its own name alone, never from the rest of the run.

An input's name is its path relative to the directory, glob or list file it came from, without the
media extension (``part1/clip`` for ``videos/part1/clip.mp4`` given as ``videos/``), or the ``key``
column of a list file. Its key is :func:`lamflow.contract.safe_key` of that name. So the same input
gets the same key whatever else is extracted with it, and annotations join on the recorded name.
Two inputs whose names give one key (``x.m4a`` and ``x.mp3``; ``a b.mp4`` and ``a_b.mp4``) are refused
before any work, naming both: choosing which one gets the key would depend on the run.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from lamflow.contract import safe_key
from lamflow.pipelines.sources import SourceError

_LISTED_COLLISIONS = 5


def assign_keys(named_sources: Iterable[tuple[str, str]], taken: Mapping[str, str] | None = None) -> dict[str, str]:
    """{source: key} for (source, name) pairs; ``taken`` maps sources to keys recorded by earlier runs
    (kept as they are, so resuming never renames a sample). Raises :class:`SourceError` when two sources
    would share a key."""
    taken = dict(taken or {})
    keys: dict[str, str] = {}
    owners: dict[str, list[str]] = {}
    for source, key in taken.items():
        owners.setdefault(key, []).append(source)
    for source, name in named_sources:
        if source in keys:
            continue
        key = taken.get(source) or safe_key(name)
        keys[source] = key
        if source not in taken:
            owners.setdefault(key, []).append(source)
    clashes = {key: sources for key, sources in owners.items() if len(sources) > 1}
    if clashes:
        shown = "; ".join(f"{key!r} <- {', '.join(sorted(sources))}" for key, sources in sorted(clashes.items())[:_LISTED_COLLISIONS])
        more = f" (and {len(clashes) - _LISTED_COLLISIONS} more)" if len(clashes) > _LISTED_COLLISIONS else ""
        raise SourceError(
            f"{len(clashes)} sample key(s) would name two inputs: {shown}{more}. Keys come from each input's "
            "own name; rename one of them, narrow --extensions, or list the inputs in a .csv/.jsonl with a "
            "distinct 'key' column"
        )
    return keys
