"""Joining annotation names to shard samples.

Shard keys must not contain dots (WebDataset splits the field name at the first dot), so the extraction
pipeline stores a *safe* key: ``re.sub(r"[^A-Za-z0-9_-]", "_", name)``, with a suffix when two names
collide, and records the original name in ``meta.json["original_name"]`` and in the manifest record
(``"name"`` is accepted too). Annotations name videos by their original name (QVHighlights ``vid`` =
``j7rJstUseKg_360.0_510.0``, dots included), so a sample matches an annotation name when, in this order:

1. the recorded original name equals the annotated name exactly (always right, collisions included);
2. the shard key equals the annotated name exactly (names that were already safe);
3. the shard key equals the safe form of the annotated name (shards whose meta.json lacks "name").

Rule 3 is skipped for safe forms that two different annotated names share: only rule 1 can tell them apart.
Rule 3 is the plain character rule; the pipeline also folds accents and shortens names over 120 characters,
so shards of such names join through rule 1 only (the pipeline always records the original name).
This module deliberately re-states the pipeline's key rule instead of importing it: datasets read the shard
contract and must not depend on how shards were made.
"""
from __future__ import annotations

import re
from typing import Generic, Iterable, Mapping, TypeVar

Value = TypeVar("Value")


def safe_name(name: str) -> str:
    """The shard-key form of a source name (without the collision suffix the pipeline may add)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


class NameIndex(Generic[Value]):
    """Annotated name -> value, looked up with the rules of the module docstring."""

    def __init__(self, values: Mapping[str, Value]):
        self._by_name = dict(values)
        by_safe: dict[str, Value] = {}
        shared: set[str] = set()
        for name, value in self._by_name.items():
            safe = safe_name(name)
            if safe in by_safe:
                shared.add(safe)
            by_safe[safe] = value
        self._by_safe = {safe: value for safe, value in by_safe.items() if safe not in shared}

    def __len__(self) -> int:
        return len(self._by_name)

    def lookup(self, name: str | None, key: str) -> Value | None:
        """The value for a shard sample with original name ``name`` (meta.json) and shard key ``key``."""
        for found in (self._by_name.get(name) if name else None, self._by_name.get(key), self._by_safe.get(key)):
            if found is not None:
                return found
        return None

    def lookup_keys(self, keys: Iterable[str]) -> list[Value]:
        """Values for names or keys alone (epochs are planned from the shard index, before meta.json is read)."""
        return [value for key in keys if (value := self.lookup(None, key)) is not None]
