"""The shard contract: what pipelines/ writes, datasets/ reads, and any plain webdataset reader sees.

An output directory ``DIR`` holds::

    DIR/shards/shard-000000.tar ...   WebDataset tars, one sample per input
    DIR/manifest.jsonl                one Record per input (ok: its shard; error: why)
    DIR/sizes.json                    {shard file name: samples}
    DIR/stats.json                    totals, feature widths, failures
    DIR/extraction.json               the settings of the run (compared on resume)

A sample's members are ``KEY.FIELD``: ``video.npy`` / ``video_ts.npy`` (T x D tokens, T seconds) per
stream, ``text.npy`` / ``text_pooled.npy`` (K x L x D / K x D) for the sample's texts, and ``meta.json``.
An image run writes one stream per image, ``image.npy`` / ``image_ts.npy``: the class token and the
patches in raster order, every timestamp 0 (a still image is one instant), duration 0.
Keys use ``[A-Za-z0-9_-]`` only, because webdataset splits a member name at its first dot into key and
field (:func:`split_member` is that rule). Arrays are ``.npy`` written with ``allow_pickle=False`` and
read the same way, so no pickle ever enters or leaves a shard.

Both sides import this module and nothing of each other: pipelines never imports datasets and datasets
never imports pipelines.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, tarfile_samples

from lamflow.errors import DataFileError

FORMAT = "lamflow-shards/1"

# ---- files of an output directory --------------------------------------------------------------------
SHARDS_DIR = "shards"
MANIFEST = "manifest.jsonl"
SIZES = "sizes.json"
STATS = "stats.json"
EXTRACTION = "extraction.json"
# The sample index (lamflow.sample_index): arrays built from manifest.jsonl + sizes.json, memory-mapped by readers.
SAMPLE_INDEX = "sample_index"
SHARD_PATTERN = "shard-%06d.tar"
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.tar$")


# A partitioned output tree (``lamflow extract --partition K/N``): ``DIR/partitions/part-0000K-of-0000N/``,
# each an output directory of the layout above written by its own run; readers take the tree as one dataset.
PARTITIONS_DIR = "partitions"
_PARTITION_NAME = re.compile(r"^part-(\d{5,})-of-(\d{5,})$")


def partition_dir_name(index: int, count: int) -> str:
    """The folder of partition ``index`` (0-based) of ``count`` inside ``DIR/partitions/``."""
    return f"part-{index:05d}-of-{count:05d}"


def output_dirs(root: str | Path) -> list[Path]:
    """The output directories of the dataset at ``root``: ``[root]`` for a single run, or the partition
    folders of a partitioned tree, in partition order. A tree whose partitions disagree on N is a
    :class:`DataFileError` (two partitionings of one input list would hold some inputs twice)."""
    root = Path(root)
    parts_dir = root / PARTITIONS_DIR
    if not parts_dir.is_dir():
        return [root]
    found = sorted((int(m.group(1)), int(m.group(2)), p) for p in parts_dir.iterdir()
                   if p.is_dir() and (m := _PARTITION_NAME.match(p.name)))
    counts = sorted({count for _, count, _ in found})
    if len(counts) > 1:
        raise DataFileError(f"{parts_dir} holds partitions of {' and '.join(map(str, counts))} parts; one tree takes "
                            "one --partition K/N count (move the other partitioning to its own --out)")
    if found and ((root / SIZES).exists() or (root / MANIFEST).exists()):
        raise DataFileError(f"{root} holds both a single run's output and {PARTITIONS_DIR}/; keep one of them per --out")
    return [p for _, _, p in found] or [root]


def shard_index(name: str) -> int | None:
    """The number of a final shard file name (``shard-000007.tar`` -> 7), or None for anything else."""
    match = _SHARD_NAME.match(name)
    return int(match.group(1)) if match else None


def final_shards(shards_dir: str | Path) -> list[Path]:
    """The complete shard files of ``shards_dir``, in shard-number order (unfinished ones are hidden temps)."""
    shards_dir = Path(shards_dir)
    if not shards_dir.is_dir():
        return []
    found = [p for p in shards_dir.iterdir() if shard_index(p.name) is not None]
    return sorted(found, key=lambda p: shard_index(p.name))


# ---- sample fields -------------------------------------------------------------------------------------
META = "meta.json"
TEXT_STREAM = "text"  # per-text tokens live in the sample (text.npy), but are joined per query by tasks
TEXT_TOKENS = "text.npy"
TEXT_POOLED = "text_pooled.npy"
MEDIA_STREAMS = ("video", "audio")  # what video extraction writes
IMAGE_STREAM = "image"  # what image extraction writes: (1 + N patches) x D tokens per image


def tokens_field(stream: str) -> str:
    return f"{stream}.npy"


def timestamps_field(stream: str) -> str:
    return f"{stream}_ts.npy"


# ---- keys ------------------------------------------------------------------------------------------------
# Media file extensions: what `lamflow extract` searches folders for (by the run's kind), and what a key made
# from a file name ends with (``clip.mp4`` -> ``clip_mp4``), so a shard set without recorded names still joins
# on the name without it (rule 5 of join_names).
VIDEO_EXTENSIONS = (
    ".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".3gp", ".ogv",
)
# What Pillow decodes for an image run (``lamflow extract --media image``; pipelines/images.py).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".aac", ".opus")  # audio-only inputs (--extensions)
_KEY_EXTENSIONS = {e[1:].lower() for e in (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS, *AUDIO_EXTENSIONS)}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_KEY_LENGTH = 120  # keeps member names (key + ".video_ts.npy") well under filesystem limits
_DIGEST_HEX = 8


def safe_key(name: str) -> str:
    """The key of a sample named ``name``: ``[A-Za-z0-9_-]`` only, one ``_`` per unsafe character.

    Accents are folded first (``café`` -> ``cafe``) so Latin names stay readable; every other unsafe
    character (dots, spaces, slashes, CJK ...) becomes ``_``. Over-long names are cut and given a digest
    of the full name, so two long names sharing a prefix stay distinct. The result depends on ``name``
    alone, never on what else is in a run.
    """
    # ASCII has nothing to fold (NFKD leaves it as it is): skip the per-character pass, 10^7 names are common
    folded = name if name.isascii() else "".join(
        c for c in unicodedata.normalize("NFKD", name) if unicodedata.category(c) != "Mn")
    key = _UNSAFE.sub("_", folded) or "video"
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:_DIGEST_HEX]
        key = f"{key[: MAX_KEY_LENGTH - _DIGEST_HEX - 1]}-{digest}"
    return key


def split_member(member_name: str) -> tuple[str | None, str | None]:
    """(key, field) of a tar member name, exactly as webdataset groups members into samples."""
    return base_plus_ext(member_name)


# ---- encoding and decoding ---------------------------------------------------------------------------------
class ContractError(DataFileError):
    """A sample or member that breaks the shard contract (the message names the field)."""


def encode_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """A sample's fields as member bytes: ``.npy`` via ``np.save(allow_pickle=False)``, ``.json`` as UTF-8.

    Encoding here (instead of webdataset's default encoder) guarantees no pickle ever enters a shard:
    an object array fails at write time, naming the field.
    """
    key = sample.get("__key__")
    if not isinstance(key, str) or not key or _UNSAFE.search(key):
        raise ContractError(f"sample key must be a non-empty string of [A-Za-z0-9_-], got {key!r}")
    encoded: dict[str, Any] = {"__key__": key}
    for name, value in sample.items():
        if name == "__key__":
            continue
        if name.endswith(".npy"):
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise ContractError(f"sample {key!r}: field {name!r} has dtype object; store numeric arrays only")
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            encoded[name] = buffer.getvalue()
        elif name.endswith(".json"):
            encoded[name] = json.dumps(value, sort_keys=True, allow_nan=False).encode("utf-8")
        else:
            raise ContractError(f"sample {key!r}: field {name!r} is neither .npy nor .json; the shard contract has no such field")
    return encoded


def decode_npy(data: bytes, name: str) -> np.ndarray:
    """One ``.npy`` member; a pickle or an ``.npz`` in disguise fails here, never executes."""
    try:
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - any decoding failure means the member is garbage
        raise ContractError(f"{name}: not a valid .npy array ({error})") from None


def npy_header(data: bytes) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) from the first bytes of a ``.npy`` member (4 KiB hold any header numpy writes
    for token arrays), so shapes can be listed without reading array data."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    return shape, np.dtype(dtype).name


def decode_json(data: bytes, name: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ContractError(f"{name}: not valid JSON ({error})") from None


def decode_meta(data: bytes, name: str) -> dict[str, Any]:
    """A sample's ``meta.json`` member: a JSON object (anything else is a :class:`ContractError` naming ``name``)."""
    meta = decode_json(data, name)
    if not isinstance(meta, dict):
        raise ContractError(f"{name}: expected a JSON object, got {type(meta).__name__}")
    return meta


def decode_member(name: str, data: bytes) -> Any:
    """A member's value: ``.npy`` as an array, ``.json`` as an object, anything else as its bytes."""
    if name.endswith(".npy"):
        return decode_npy(data, name)
    if name == META:
        return decode_meta(data, name)
    if name.endswith(".json"):
        return decode_json(data, name)
    return data


def _reraise(error: Exception) -> bool:
    raise error


def raw_samples(urls: Iterable[str], handler: Callable[[Exception], bool] = _reraise,
                fields: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Samples as webdataset reads them: ``{"__key__", "__url__", FIELD: bytes}``, shard after shard.

    ``fields`` limits what is read (e.g. ``{"meta.json"}``); ``handler`` decides what a damaged shard
    does (webdataset's convention: return True to go on).
    """
    select = None if fields is None else (lambda member: split_member(member)[1] in fields)
    return tarfile_samples(({"url": str(url)} for url in urls), handler=handler, select_files=select)


def read_samples(path: str | Path, fields: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """The decoded samples of one shard (``.npy`` -> array, ``.json`` -> object), in tar order."""
    for raw in raw_samples([str(path)], fields=fields):
        yield {name: value if name.startswith("__") else decode_member(name, value) for name, value in raw.items()}


def iter_members(url: str | Path) -> Iterator[tuple[str, str, tarfile.TarFile, tarfile.TarInfo]]:
    """(key, field, tar, member) of every regular member of a shard, reading headers only: callers read
    a member's bytes with ``tar.extractfile(member)`` when they need them. A local file is seeked past
    the data it is not asked for; a url (``pipe:``, ``http(s):``, ...) is streamed through webdataset."""
    local = Path(url).exists()
    size = Path(url).stat().st_size if local else None
    archive = tarfile.open(url, mode="r:") if local else tarfile.open(fileobj=gopen(str(url)), mode="r|*")
    with archive as tar:
        for member in tar:
            if size is not None and member.offset_data + member.size > size:
                # tarfile seeks past data it is not asked for, so a cut-off file would end silently here
                raise tarfile.ReadError(f"{url}: member {member.name} is cut off at byte {size} (a truncated shard)")
            if not member.isreg():
                continue
            key, name = split_member(member.name)
            if key is not None:
                yield key, name, tar, member
        if size is not None and tar.offset + 2 * tarfile.BLOCKSIZE > size:
            raise tarfile.ReadError(f"{url}: no end-of-archive marker after byte {tar.offset} (a truncated shard)")


# ---- the manifest record ------------------------------------------------------------------------------------
@dataclass
class Record:
    """One manifest line: the outcome of one input."""

    key: str
    source: str
    status: str  # "ok" | "error"
    error: str | None = None
    shard: str | None = None  # shard file name (inside shards/) holding the sample, for status ok
    counts: dict[str, int] = field(default_factory=dict)  # tokens per stream, e.g. {"video": 60, "audio": 600}
    dims: dict[str, int] = field(default_factory=dict)  # feature width per stream, e.g. {"video": 512, "audio": 64}
    duration: float | None = None  # seconds of media
    original_name: str | None = None  # the name the key was made from (annotations join on it)
    seconds: float | None = None  # wall time spent extracting it

    @classmethod
    def from_meta(cls, key: str, meta: Mapping[str, Any], dims: Mapping[str, int], shard: str | None = None,
                  seconds: float | None = None) -> "Record":
        """The ``ok`` record of a written sample, rebuilt from its ``meta.json`` (which the extractor and the
        importers fill with source, counts per stream, duration and original name) and its arrays' widths."""
        return cls(key, meta["source"], "ok", shard=shard, counts=dict(meta.get("counts") or {}), dims=dict(dims),
                   duration=meta.get("duration"), original_name=meta.get("original_name"), seconds=seconds)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Record":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def name(self) -> str:
        return self.original_name or self.key


def is_token_field(name: str) -> bool:
    """Whether member field ``name`` holds a stream's tokens (``video.npy``, ``text.npy``), as opposed to
    timestamps, pooled text or meta.json."""
    return name.endswith(".npy") and not name.endswith("_ts.npy") and name != TEXT_POOLED


def array_width(shape: tuple[int, ...]) -> int | None:
    """The feature width a token array's shape states: its last axis; None for a (0, 0) array, the shape
    of a missing stream whose width nobody knew (e.g. the other stream of an h5 import)."""
    return int(shape[-1]) if len(shape) >= 2 and shape[-1] else None


def sample_dims(sample: Mapping[str, Any]) -> dict[str, int]:
    """Feature width of every token array of an (unencoded) sample, e.g. {"video": 512, "text": 512}."""
    widths = {name[: -len(".npy")]: array_width(np.shape(value)) for name, value in sample.items() if is_token_field(name)}
    return {stream: width for stream, width in widths.items() if width is not None}


def parse_manifest(path: str | Path) -> tuple[list[Record], bool]:
    """(records, torn) of a manifest: ``torn`` when the last line was cut off by a killed writer (that
    line is dropped). Any other malformed line is a :class:`DataFileError` naming ``file:line``."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines[-1] != b""  # a complete manifest ends with a newline; anything after it was cut
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            records.append(Record.from_json(json.loads(line)))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
            raise DataFileError(f"{path}:{number}: not a valid manifest record ({error}); fix the line or "
                                "re-run the extraction with --overwrite") from None
    return records, torn


def latest_records(records: Iterable[Record]) -> dict[str, Record]:
    """source -> its latest record (a retried input appears once per attempt; the last one counts)."""
    latest: dict[str, Record] = {}
    for record in records:
        latest.pop(record.source, None)  # re-insert: the order is the order of the latest attempts
        latest[record.source] = record
    return latest


# ---- joining annotations to samples --------------------------------------------------------------------------
def _last_component(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


class AmbiguousJoin(DataFileError):
    """An annotated name that names two samples, or a sample that two annotated names name."""


def join_names(annotated: Iterable[str], samples: Iterable[tuple[str, str]], what: str = "annotation") -> dict[str, str]:
    """{sample key: the annotated name that names it}, for annotations that name samples by their name.

    ``samples`` are (key, recorded original name) pairs of a shard set. An input's recorded name is its path
    relative to the folder (or list) it came from, without the extension (``part1/clip``); its key is
    :func:`safe_key` of that path with the extension (``part1_clip_mp4``; shards of older extractions: without
    it), so ``clip.mkv`` and ``clip.mp4`` side by side are two samples of one recorded name, ``clip``.

    An annotated name names a sample by the first of these rules that finds any sample:

    1. it equals the sample's recorded name (``NUsG9BgSes0_210.0_360.0``; ``part1/clip``);
    2. it equals the sample's key, or :func:`safe_key` of it equals the key: the key itself, or the input's
       relative path with its extension (``clip.mp4``; ``part1/clip.mp4``), or without it in shards of older
       extractions (``legacy.key``);
    3. it equals the last path component of the recorded name (``clip`` names ``part1/clip``; path
       components are split at ``/`` and ``\\``);
    4. it is that last component plus an extension and the key ends with ``_`` + :func:`safe_key` of it: the
       input's file name (``clip.mp4`` names the ``part1/clip`` whose key is ``part1_clip_mp4``, not the
       one from ``part1/clip.mkv``). A key cut to :data:`MAX_KEY_LENGTH` ends with a digest instead, so such
       an input is named by rules 1-3 only;
    5. :func:`safe_key` of it, ``_`` and a media extension is the key: the name without its extension, in a
       shard set that records no names (tar urls: names are keys; ``clip`` names ``clip_mp4``).

    A name that names two samples under its deciding rule (``clip`` when ``clip.mkv`` and ``clip.mp4`` were
    both extracted), or a sample named by two names, is an :class:`AmbiguousJoin` listing the candidates' keys:
    a silent double join would train on wrong pairs. Only the names given are looked up, so two samples of one
    recorded name are an error only for annotations that use that name. Names that name no sample are left
    out of the result.
    """
    by_name: dict[str, list[str]] = {}
    by_key: dict[str, list[str]] = {}
    by_last: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}  # key less its media-extension suffix (rule 5)
    for key, name in samples:
        by_name.setdefault(name, []).append(key)
        by_key.setdefault(key, []).append(key)
        by_last.setdefault(_last_component(name), []).append(key)
        stem, _, extension = key.rpartition("_")
        if stem and extension.lower() in _KEY_EXTENSIONS:
            by_stem.setdefault(stem, []).append(key)
    joined: dict[str, str] = {}
    for wanted in dict.fromkeys(annotated):
        candidates = (by_name.get(wanted) or by_key.get(wanted) or by_key.get(safe_key(wanted))
                      or by_last.get(wanted) or _by_file_name(wanted, by_last) or by_stem.get(safe_key(wanted)) or [])
        if len(candidates) > 1:
            raise AmbiguousJoin(
                f"{what} name {wanted!r} names {len(candidates)} samples ({', '.join(sorted(candidates)[:5])}); "
                "name one by its full relative name (e.g. 'part1/clip'), with the extension where two files "
                "differ only by it (e.g. 'clip.mp4'), or give the inputs distinct names"
            )
        if candidates:
            key = candidates[0]
            if key in joined:
                raise AmbiguousJoin(
                    f"sample {key!r} is named by two {what} names, {joined[key]!r} and {wanted!r}; keep one"
                )
            joined[key] = wanted
    return joined


def _by_file_name(wanted: str, by_last: Mapping[str, list[str]]) -> list[str]:
    """Rule 4 of :func:`join_names`: the keys of the samples whose input file name (last path component
    of the recorded name, plus extension) is ``wanted``."""
    stem, dot, _ = wanted.rpartition(".")
    if not dot:
        return []
    suffix = f"_{safe_key(wanted)}"
    return [key for key in by_last.get(stem, []) if key.endswith(suffix)]
