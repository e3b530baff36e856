"""Resolve a shard specification into shard urls, their sample counts and the sample keys in each.

A specification is one of:
- an extraction output DIR (holds ``sizes.json`` and ``shards/``): counts come from ``sizes.json``, keys and
  original source names from ``manifest.jsonl`` (records with status ``ok``), the index the pipeline writes;
- a brace pattern (``/data/shard-{000000..000009}.tar``), a single ``.tar`` path, or a list of them: keys and
  counts are read from the tar headers (member names only, no payload is decoded).

The loader needs the keys of every shard before it streams anything: epoch sizes, the split of shards over
ranks and workers, and the equal number of batches on every rank are all computed from per-shard item counts.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import braceexpand
from webdataset.gopen import gopen  # understands pipe:, http(s):, file: urls
from webdataset.tariterators import base_plus_ext  # the grouping rule the stream uses

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardInfo:
    url: str
    keys: tuple[str, ...]  # sample keys in tar order
    # Names tasks join annotations on, one per key: the manifest's original_name, else the key itself.
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", self.keys)

    @property
    def num_samples(self) -> int:
        return len(self.keys)


def read_tar_keys(url: str) -> tuple[str, ...]:
    """Sample keys of one tar, in order, reading headers only (a local file is seeked, not read)."""
    keys: list[str] = []
    try:
        if os.path.exists(url):
            archive = tarfile.open(url, mode="r:")
        else:
            archive = tarfile.open(fileobj=gopen(url), mode="r|*")
        with archive:
            for member in archive:
                key = base_plus_ext(member.name)[0] if member.isreg() else None
                if key is not None and (not keys or keys[-1] != key):
                    keys.append(key)
    except (OSError, tarfile.TarError) as error:
        # An unreadable shard is counted and skipped while streaming; here it contributes the keys
        # read before the damage so the epoch plan stays usable.
        log.warning("shard %s: cannot list all members (%s); using the %d keys read so far", url, error, len(keys))
    return tuple(keys)


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); re-run the extraction or fix the file") from error


def _manifest_keys(manifest: Path) -> dict[str, list[tuple[str, str]]]:
    """Shard file name -> (key, original name) of the ``ok`` records of ``manifest.jsonl``."""
    by_shard: dict[str, list[tuple[str, str]]] = {}
    with manifest.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{manifest}:{number}: not valid JSON ({error})") from error
            if record.get("status") == "ok" and record.get("shard"):
                key = str(record["key"])
                name = str(record.get("original_name") or key)
                by_shard.setdefault(Path(str(record["shard"])).name, []).append((key, name))
    return by_shard


def shards_from_dir(directory: Path) -> list[ShardInfo]:
    sizes_path = directory / "sizes.json"
    if not sizes_path.is_file():
        raise FileNotFoundError(
            f"{directory}: no sizes.json; pass an extraction output DIR (shards/ + sizes.json), "
            "a brace pattern like 'DIR/shards/shard-{000000..000009}.tar' or a list of .tar paths"
        )
    sizes = _load_json(sizes_path)
    if not isinstance(sizes, dict) or not all(isinstance(n, int) and n >= 0 for n in sizes.values()):
        raise ValueError(f"{sizes_path}: expected {{shard file name: number of samples}}")
    manifest = directory / "manifest.jsonl"
    keys_by_shard = _manifest_keys(manifest) if manifest.is_file() else {}
    shards = []
    for name in sorted(sizes):
        url = str(directory / "shards" / Path(name).name)
        if not os.path.isfile(url):
            raise FileNotFoundError(f"{sizes_path} lists {name} but {url} does not exist; re-run the extraction")
        records = keys_by_shard.get(Path(name).name, [])
        if len(records) == sizes[name]:
            shards.append(ShardInfo(url=url, keys=tuple(k for k, _ in records), names=tuple(n for _, n in records)))
        else:  # the manifest is missing or disagrees with sizes.json: the tar itself is the truth
            shards.append(ShardInfo(url=url, keys=read_tar_keys(url)))
    return shards


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else list(spec)
    return [url for pattern in patterns for url in braceexpand.braceexpand(str(pattern))]


def resolve_shards(spec: str | Path | Sequence[str]) -> list[ShardInfo]:
    """Shards of an extraction DIR, a brace pattern, a .tar path or a list of them (see module doc)."""
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        shards = shards_from_dir(Path(spec))
    else:
        urls = expand_urls(str(spec) if isinstance(spec, (str, Path)) else spec)
        missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not os.path.isfile(u)]
        if missing:
            raise FileNotFoundError(
                f"shards: {len(missing)} shard file(s) not found, e.g. {missing[0]}; check the path or pattern"
            )
        shards = [ShardInfo(url=url, keys=read_tar_keys(url)) for url in urls]
    if not shards:
        raise ValueError(f"shards: {spec!r} names no shard; expected a DIR with sizes.json or .tar urls")
    return shards
