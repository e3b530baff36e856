"""Query text tokens by id, read on demand from a text shard set (e.g. ``lamflow import-h5 --stream text``).

A MAD-style dataset keeps its query features apart from the videos: one n_words x D array per sentence id,
hundreds of thousands of them. ``TextStore`` indexes a shard set of texts once, from the tar headers and each
sample's ``meta.json`` (a few hundred bytes; the token arrays are never read while indexing), into
id -> (shard, byte offset and size of the ``text.npy`` member, row, token count). ``tokens(id)`` then reads
that one member with a positioned read: no sentence is held in memory, and the store holds no open file, so
it is safe to copy into DataLoader worker processes (fork or spawn).

Any sample with ``text.npy`` and ``meta.json`` ``texts`` ([{"id", "tokens"}], one per row of the K x L x D
array) is indexed: the text-only samples of ``import-h5 --stream text`` (K = 1) as well as video samples
extracted with ``--texts``. The shards must be local files (reading by offset needs a seekable file).
"""
from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lamflow.contract import META, TEXT_STREAM, TEXT_TOKENS, ContractError, decode_meta, decode_npy, iter_members
from lamflow.datasets.shardlist import resolve_shards
from lamflow.errors import DataFileError

_LISTED = 5  # ids a message lists before counting the rest


class MissingTexts(DataFileError):
    """Ids asked of a text store that it does not hold."""


class TextStore:
    """Token arrays by text id from a text shard set; see the module docstring."""

    def __init__(self, spec: str | Path | list[str]):
        self.spec = str(spec) if isinstance(spec, (str, Path)) else list(spec)
        shards = resolve_shards(spec)
        self.urls = [shard.url for shard in shards]
        remote = [url for url in self.urls if not os.path.isfile(url)]
        if remote:
            raise DataFileError(f"text store {self.spec}: {remote[0]} is not a local file; the store reads tokens by "
                                "seeking into the shards, so give local shard files")
        self.width: int | None = shards.recorded_dims([TEXT_STREAM]).get(TEXT_STREAM)  # feature width of the tokens
        self._rows: dict[str, int] = {}
        columns: list[tuple[int, int, int, int, int]] = []  # shard, offset, size, row in text.npy, tokens
        for shard_index, url in enumerate(self.urls):
            for key, (member, texts) in _text_members(url).items():
                for row, (text_id, tokens) in enumerate(texts):
                    if text_id in self._rows:
                        other = self.urls[columns[self._rows[text_id]][0]]
                        raise DataFileError(f"text store {self.spec}: text id {text_id!r} is in {other} and in sample "
                                            f"{key!r} of {url}; each id must name one text")
                    self._rows[text_id] = len(columns)
                    columns.append((shard_index, member.offset_data, member.size, row, tokens))
        if not columns:
            raise DataFileError(f"text store {self.spec} holds no texts (no sample with {TEXT_TOKENS} and meta.json "
                                "texts); import a language file with `lamflow import-h5 FILE.h5 --stream text`")
        # Compact columns: a Python tuple per text would cost ~100 bytes each on 400,000 sentences.
        self._index = np.asarray(columns, dtype=np.int64)
        if self.width is None:  # an index without recorded widths (tar patterns): the first text says
            self.width = int(self.tokens(next(iter(self._rows))).shape[1])

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, text_id: object) -> bool:
        return str(text_id) in self._rows

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids of ``ids`` the store does not hold, in the given order."""
        return [text_id for text_id in dict.fromkeys(map(str, ids)) if text_id not in self._rows]

    def require(self, ids: Iterable[str], what: str) -> None:
        """Raise :class:`MissingTexts` naming the ids of ``what`` (e.g. an annotation file) the store lacks."""
        ids = list(dict.fromkeys(map(str, ids)))
        absent = self.missing(ids)
        if absent:
            shown = ", ".join(repr(i) for i in absent[:_LISTED]) + (" ..." if len(absent) > _LISTED else "")
            raise MissingTexts(f"{len(absent)} of the {len(ids)} query ids of {what} have no tokens in the text store "
                               f"{self.spec} ({len(self)} texts), e.g. {shown}; import the language file that holds "
                               "them (lamflow import-h5 FILE.h5 --stream text) or fix the ids")

    def tokens(self, text_id: str) -> np.ndarray:
        """The L x D tokens of ``text_id`` (one positioned read of its ``text.npy`` member)."""
        row = self._rows.get(str(text_id))
        if row is None:
            raise MissingTexts(f"text id {text_id!r} is not in the text store {self.spec}")
        shard, offset, size, text_row, count = (int(v) for v in self._index[row])
        url = self.urls[shard]
        fd = os.open(url, os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        where = f"text store {self.spec}: tokens of text id {text_id!r} in {url}"
        try:
            array = decode_npy(data, TEXT_TOKENS)
        except ContractError as error:
            raise DataFileError(f"{where} are damaged ({error}); re-import the language file") from None
        if array.ndim != 3 or not text_row < array.shape[0] or not count <= array.shape[1] or array.dtype.kind != "f":
            raise DataFileError(f"{where}: {TEXT_TOKENS} has shape {array.shape} and dtype {array.dtype}; expected "
                                f"float K x L x D with row {text_row} holding {count} tokens")
        tokens = array[text_row, :count]
        if self.width is not None and tokens.shape[1] != self.width:
            raise DataFileError(f"{where} have width {tokens.shape[1]}, the store's is {self.width}: the shard set "
                                "mixes text features of two models")
        if not np.isfinite(tokens).all():
            raise DataFileError(f"{where} contain NaN or inf; re-import the language file")
        return tokens


def _text_members(url: str) -> dict[str, tuple[tarfile.TarInfo, list[tuple[str, int]]]]:
    """{key: (its text.npy member, [(text id, tokens), ...] from its meta.json)} of one shard, for the
    samples holding both; reads tar headers and meta.json members only."""
    arrays: dict[str, tarfile.TarInfo] = {}
    texts: dict[str, list[tuple[str, int]]] = {}
    try:
        for key, name, tar, member in iter_members(url):
            if name == TEXT_TOKENS:
                arrays[key] = member
            elif name == META:
                meta = decode_meta(tar.extractfile(member).read(), f"{url}: {member.name}")
                listed = meta.get("texts")
                if isinstance(listed, list):
                    texts[key] = [_text_entry(entry, url, key) for entry in listed]
    except (OSError, tarfile.TarError, EOFError, ContractError) as error:
        raise DataFileError(f"text store: shard {url} is unreadable ({error}); re-import it") from None
    return {key: (arrays[key], texts[key]) for key in arrays if texts.get(key)}


def _text_entry(entry: object, url: str, key: str) -> tuple[str, int]:
    tokens = entry.get("tokens") if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or "id" not in entry or isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise DataFileError(f"text store: sample {key!r} of {url} lists text {entry!r}; meta.json texts entries need "
                            "an 'id' and an int 'tokens' >= 0")
    return str(entry["id"]), tokens
