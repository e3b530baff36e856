"""Sample keys of a feature-file import (``import-h5``, ``import-npz``): each id's key comes from the id alone.

A feature file names its samples by ids (a movie id, a sentence id); each id's key is
:func:`lamflow.contract.safe_key` of it, unless an earlier run recorded another (kept: resuming never
renames a sample). Two ids whose keys would clash are refused here, naming both; pipelines/feature_files.py
first gives clashing ids distinct keys made from each id alone. (Media inputs get their keys in plan.py,
from the input's name with its extension, and a clash there is a recorded failure of those inputs.)
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
