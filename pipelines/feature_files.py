"""Feature files <-> lamflow shards: the part every file layout shares (MAD-style HDF5: h5io.py;
moment_detr-style npz folders: npzio.py).

**Import.** Each named array of a feature file becomes one sample of the shard contract, written through the
same OutputDir (manifest, resume, atomic shards) as an extraction:

- a feature array (T x D rows at ``fps`` rows per second) becomes the imported stream with timestamps
  ``index / fps``; the other media stream is an empty (0, 0) array plus a note, since its width is unknown;
- a text array (n_words x D token features of one query or sentence) becomes a text-only sample:
  ``text.npy`` 1 x n_words x D, ``text_pooled.npy`` 1 x D when the file has a pooled feature, and
  ``meta.json`` ``texts: [{"id": <id>, "tokens": n_words}]``; no video or audio stream and no rate. Such a
  shard set is what ``lamflow.datasets.texts.TextStore`` reads query tokens from.

Each layout lists its arrays, checks them from their headers before the output directory is touched, and
hands :func:`import_arrays` a reader; a re-run resumes, other settings for the same output are refused.
Every id is imported, whatever characters it holds: a sample's key is :func:`array_keys`'s, and the id
itself is kept as the sample's original name. An array holding NaN or inf values is recorded as a failure
of its id (every reader would skip the sample); the rest of the input is imported.

**Export.** :func:`dataset_shards` reads a dataset (one run or a partitioned tree, see
``lamflow.contract.output_dirs``); :func:`stream_arrays` and :func:`text_arrays` give its arrays by the
names a file layout stores them under: a stream per sample named by its original name (the id of an
import, the file stem of a video), texts by id.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from lamflow import __version__
from lamflow.contract import (
    EXTRACTION,
    MAX_KEY_LENGTH,
    MEDIA_STREAMS,
    META,
    SHARDS_DIR,
    TEXT_POOLED,
    TEXT_STREAM,
    TEXT_TOKENS,
    Record,
    final_shards,
    is_token_field,
    output_dirs,
    read_samples,
    safe_key,
    sample_dims,
    tokens_field,
)
from lamflow.errors import DataFileError
from lamflow.fileio import read_json
from lamflow.pipelines.keys import assign_keys
from lamflow.pipelines.manifest import OutputDir
from lamflow.pipelines.settings import DTYPES
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES

STREAMS = (*MEDIA_STREAMS, TEXT_STREAM)  # what a feature file imports as
# One array is read into memory at a time; a header declaring more than this is refused before reading
# (a few-KB file can declare a multi-TiB array).
MAX_ARRAY_BYTES = 16 * 2**30
# CLIP's text context is 77 tokens and BERT-style encoders stop at 512: a "sentence" with more rows is a
# frames array (a 2-hour movie at 5 fps has 36,000), so importing it as text is refused.
MAX_TEXT_TOKENS = 512
_ID_DIGEST_HEX = 8  # hex digits of sha1(id) that set apart ids of one safe key (a 1 in 4 billion clash)


@dataclass
class ImportSummary:
    out_dir: str
    datasets: int  # arrays found in the input
    imported: int  # written in this run
    skipped_done: int  # already imported by an earlier run
    shards_written: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)  # what the input looks like, when it is not what --stream says
    failures: dict[str, str] = field(default_factory=dict)  # id -> why it was not imported (recorded in the manifest)


@dataclass(frozen=True)
class Imported:
    """One named array read from a feature file, with what its sample records of where it came from."""

    tokens: np.ndarray  # T x D features, or n_words x D text tokens
    provenance: dict[str, Any]  # e.g. {"imported_from": file, "dataset": name}
    pooled: np.ndarray | None = None  # a text's pooled feature (D,), when the file has one


@dataclass(frozen=True)
class ImportOptions:
    """How a feature file is imported, whatever its layout (the options of ``import-h5`` and ``import-npz``)."""

    stream: str = "video"  # what the arrays are: video or audio features, or text (query/sentence token features)
    fps: float | None = None  # feature rows per second: required for video/audio, None for text
    dtype: str | None = None  # dtype to store; None keeps the file's float16/float32 (others become float32)
    shard_samples: int = DEFAULT_SHARD_SAMPLES
    shard_bytes: int = DEFAULT_SHARD_BYTES
    overwrite: bool = False  # delete the output's previous shards and records first

    def check(self, what: str) -> None:
        """The rules every import shares: a known stream; a rate for features and none for text; a known dtype.
        ``what`` names the input's rows in the message (e.g. 'of the h5 file, e.g. 5 for MAD's CLIP frames')."""
        stream, fps = self.stream, self.fps
        if stream not in STREAMS:
            raise DataFileError(f"stream must be one of {STREAMS}, got {stream!r}")
        if stream == TEXT_STREAM and fps is not None:
            raise DataFileError(f"fps={fps!r} does not apply to stream text: sentence tokens have no rate; leave --fps out")
        if stream != TEXT_STREAM and not (isinstance(fps, (int, float)) and fps > 0):
            raise DataFileError(f"fps must be > 0 for stream {stream} (feature rows per second {what}), got {fps!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise DataFileError(f"dtype must be one of {DTYPES} or None (keep the file's), got {self.dtype!r}")

    def recorded(self) -> dict[str, Any]:
        """What the run record keeps of these options: what the features are (a resume with others is refused);
        shard sizes and overwrite only shape this run's writing."""
        return {"stream": self.stream, "fps": self.fps, "dtype": self.dtype}


def check_array(shape: tuple[int, ...], dtype: np.dtype, where: str, expected: str, ndim: int = 2) -> None:
    """Refuse, naming ``where``, an array that is not a non-empty numeric array of ``ndim`` axes or that
    declares more than MAX_ARRAY_BYTES; ``expected`` says what the layout holds instead."""
    if dtype.kind not in "fiu":  # first: an object array (a pickle) is refused for what it is
        raise DataFileError(f"{where} has dtype {dtype}; expected numeric features")
    if len(shape) != ndim:
        raise DataFileError(f"{where} has shape {tuple(shape)}; {expected}")
    if 0 in shape:
        raise DataFileError(f"{where} is empty (shape {tuple(shape)}); {expected}, with at least one row and one "
                            "feature: remove or re-extract it")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise DataFileError(f"{where} declares shape {tuple(shape)} ({nbytes / 2**30:.1f} GiB), more than the "
                            f"{MAX_ARRAY_BYTES / 2**30:.0f} GiB one video's features can hold; the file is damaged or "
                            "not a feature file")


def check_text_rows(rows: dict[str, int], where: Path, kind: str) -> None:
    """Refuse text arrays longer than MAX_TEXT_TOKENS rows ({name: rows} of the ``kind`` -- 'dataset', 'file'
    -- arrays of input ``where``): they are frames, not a sentence."""
    long = sorted((name for name, n in rows.items() if n > MAX_TEXT_TOKENS), key=lambda name: -rows[name])
    if long:
        raise DataFileError(
            f"{where}: {kind} {long[0]!r} has {rows[long[0]]} rows ({len(long)} of {len(rows)} {kind}s have more than "
            f"{MAX_TEXT_TOKENS}); a sentence's token features are shorter, so this looks like a frames file: import "
            "it with --stream video --fps RATE"
        )


def array_keys(ids: Iterable[str]) -> dict[str, str]:
    """{array id: sample key} for the ids of one input: :func:`safe_key` of the id, unless other ids of the
    input have that safe key too (``a.b.c`` and ``a_b_c``). Then an id that is not itself that key gets
    ``safe_key(id)`` cut to leave room for ``-`` + 8 hex digits of sha1(id): a key made from the id alone.
    So an id that is a safe key is always its own key, ids that sanitise apart keep their readable keys,
    and no two ids share one."""
    plain = {name: safe_key(name) for name in ids}
    shared = {key for key, count in Counter(plain.values()).items() if count > 1}
    return {name: _digest_key(name) if key in shared and key != name else key for name, key in plain.items()}


def _digest_key(name: str) -> str:
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:_ID_DIGEST_HEX]
    return f"{safe_key(name)[: MAX_KEY_LENGTH - _ID_DIGEST_HEX - 1]}-{digest}"


def _non_finite(raw: np.ndarray, array: np.ndarray) -> str | None:
    """Why ``array`` (the input's ``raw`` as it will be stored) cannot be imported, or None: NaN or inf
    values, which every reader of the features refuses."""
    finite = np.isfinite(array)
    if finite.all():
        return None
    bad_values = array.size - int(np.count_nonzero(finite))
    bad_rows = int(np.count_nonzero(~finite.reshape(len(array), -1).all(axis=1)))
    where = f"{bad_values} of {array.size} values, in {bad_rows} of {len(array)} rows"
    if np.isfinite(raw).all():
        return (f"NaN or inf in the features ({where}): the file's {raw.dtype} values overflow {array.dtype}; "
                "import with a wider --dtype")
    return f"NaN or inf in the features ({where}); every reader skips such a sample: fix or drop the dataset"


def stored(array: np.ndarray, dtype: str | None) -> np.ndarray:
    """Keep float16/float32 as in the file (so export reproduces it bit for bit) unless ``dtype`` is given."""
    if dtype is not None:
        with np.errstate(over="ignore"):  # an overflow becomes inf, which _non_finite reports as the id's failure
            return array.astype(dtype)
    return array if array.dtype.name in DTYPES else array.astype(np.float32)


def _media_sample(key: str, name: str, source: str, item: Imported, array: np.ndarray, stream: str, fps: float,
                  origin: str) -> dict[str, Any]:
    other = next(s for s in MEDIA_STREAMS if s != stream)
    length = len(array)
    return {
        "__key__": key,
        tokens_field(stream): array,
        f"{stream}_ts.npy": (np.arange(length, dtype=np.float64) / fps).astype(np.float32),
        tokens_field(other): np.zeros((0, 0), array.dtype),
        f"{other}_ts.npy": np.zeros(0, np.float32),
        META: {
            "key": key,
            "source": source,
            "original_name": name,
            "duration": length / fps,
            "streams": {stream: {"tokens": length, "dim": int(array.shape[1]), "fps": fps}, other: None},
            "counts": {stream: length, other: 0},
            "provenance": {
                stream: {**item.provenance, "fps": fps, "timestamps": "index / fps",
                         "source_dtype": item.tokens.dtype.name, "dtype": array.dtype.name},
                other: {"missing": f"not in {origin}"},
            },
            "notes": [f"imported {stream} features from {origin}; no {other} stream: {other}.npy is empty (0, 0)"],
            "lamflow_version": __version__,
        },
    }


def _text_sample(key: str, name: str, source: str, item: Imported, array: np.ndarray, pooled: np.ndarray | None,
                 origin: str) -> dict[str, Any]:
    length = len(array)
    sample: dict[str, Any] = {"__key__": key, TEXT_TOKENS: array[None]}
    if pooled is not None:
        sample[TEXT_POOLED] = pooled[None]
    sample[META] = {
        "key": key,
        "source": source,
        "original_name": name,
        "texts": [{"id": name, "tokens": length}],
        "streams": {TEXT_STREAM: {"tokens": length, "dim": int(array.shape[1])}},
        "counts": {TEXT_STREAM: 1},
        "provenance": {TEXT_STREAM: {**item.provenance, "source_dtype": item.tokens.dtype.name,
                                     "dtype": array.dtype.name, "pooled": item.pooled is not None}},
        # One wording for every sample (the id is in texts), so inspect groups them as one note.
        "notes": [f"imported text tokens from {origin}: a text-only sample, no video or audio stream"],
        "lamflow_version": __version__,
    }
    return sample


def import_arrays(
    names: Sequence[str],
    read: Callable[[str], Imported],
    source_of: Callable[[str], str],
    out_dir: str | Path,
    record: dict[str, Any],
    options: ImportOptions,
    origin: str,
    warnings: Sequence[str] = (),
) -> ImportSummary:
    """Write one sample per name (``read(name)`` gives its array) into ``out_dir``; resumable like extraction.

    ``names`` are the arrays' ids (video ids, or text ids for stream text), checked by the caller;
    ``source_of(name)`` is the manifest's source of each; ``record`` the run's settings (compared on resume);
    ``origin`` names the input in notes (e.g. the h5 file's name).
    """
    stream, fps, dtype = options.stream, options.fps, options.dtype
    started = time.perf_counter()
    output = OutputDir(Path(out_dir), record, overwrite=options.overwrite)
    try:
        planned = {source_of(name): key for name, key in array_keys(names).items()}
        # assign_keys keeps the keys it is given (an earlier run's first) and refuses a clash
        keys = assign_keys(((source_of(n), n) for n in names), taken={**planned, **output.keys_by_source()})
        done = output.done_sources()
        todo = [n for n in names if source_of(n) not in done]
        failures: dict[str, str] = {}
        with output.shard_sink(options.shard_samples, options.shard_bytes) as sink:
            for name in todo:
                source = source_of(name)
                key, item = keys[source], read(name)
                array = stored(item.tokens, dtype)
                pooled = None if item.pooled is None else stored(item.pooled, dtype)
                problem = _non_finite(item.tokens, array) or (pooled is not None and _non_finite(item.pooled[None], pooled[None]))
                if problem:
                    output.append([Record(key, source, "error", error=problem, original_name=name)])
                    failures[name] = problem
                    continue
                if stream == TEXT_STREAM:
                    sample = _text_sample(key, name, source, item, array, pooled, origin)
                    entry = Record(key, source, "ok", counts={TEXT_STREAM: 1}, dims=sample_dims(sample), original_name=name)
                else:
                    sample = _media_sample(key, name, source, item, array, stream, fps, origin)
                    entry = Record(key, source, "ok", counts={stream: len(array)}, dims=sample_dims(sample),
                                   duration=len(array) / fps, original_name=name)
                sink.write(sample, entry)
        output.compact()
        output.write_summaries()
        return ImportSummary(str(out_dir), len(names), len(todo) - len(failures), len(names) - len(todo), sink.committed,
                             round(time.perf_counter() - started, 3), list(warnings), failures)
    finally:
        output.close()


# ---- export ----------------------------------------------------------------------------------------------
def dataset_shards(root: str | Path) -> tuple[dict[str, Any], list[Path]]:
    """(the run record of ``extraction.json``, every final shard) of the dataset at ``root``: one output
    directory, or every partition of a partitioned tree in partition order (its first partition's record)."""
    dirs = output_dirs(root)
    missing = [d for d in dirs if not (d / EXTRACTION).is_file()]
    if missing:
        raise DataFileError(f"{missing[0]} is not a lamflow output directory (no {EXTRACTION})")
    return read_json(dirs[0] / EXTRACTION), [shard for d in dirs for shard in final_shards(d / SHARDS_DIR)]


def stream_arrays(shards: list[Path], stream: str) -> Iterator[tuple[str, str, dict, np.ndarray]]:
    """(name, key, meta, array) of ``stream`` for every sample: named by the sample's original name (the id
    of an import, the file stem of a video), or by its key where two samples share a name. A sample without
    the stream is a DataFileError naming what it holds."""
    names = sample_names(shards)
    for shard in shards:
        for sample in read_samples(shard):
            key, meta = sample["__key__"], sample[META]
            if tokens_field(stream) not in sample:
                held = sorted(name[: -len(".npy")] for name in sample if is_token_field(name))
                raise DataFileError(f"{shard}: sample {key!r} has no {stream} stream (it holds {held}); "
                                    "export a stream the samples hold with --stream")
            yield names[key], key, meta, sample[tokens_field(stream)]


def sample_names(shards: list[Path]) -> dict[str, str]:
    """{key: the name a file layout stores the sample under}: its original name (the id of an import, the
    file stem of a video), or its key where two samples share an original name. Reads only meta.json."""
    metas = {s["__key__"]: s[META] for shard in shards for s in read_samples(shard, {META})}
    originals = {key: str(meta.get("original_name") or key) for key, meta in metas.items()}
    shared = {name for name, n in Counter(originals.values()).items() if n > 1}
    return {key: key if name in shared else name for key, name in originals.items()}


def text_arrays(shards: list[Path]) -> Iterator[tuple[str, str, dict, np.ndarray, np.ndarray | None]]:
    """(text id, key, meta, n_words x D tokens, pooled D or None) of every text of every sample; samples
    without texts are passed over. An id two samples share is a DataFileError (one array per id)."""
    owner: dict[str, str] = {}
    for shard in shards:
        for sample in read_samples(shard):
            key, meta = sample["__key__"], sample[META]
            for row, text in enumerate(meta.get("texts") or []):
                text_id = str(text["id"])
                if text_id in owner:
                    raise DataFileError(f"text id {text_id!r} is in samples {owner[text_id]!r} and {key!r}; a feature "
                                        "file holds one array per text id")
                owner[text_id] = key
                pooled = sample[TEXT_POOLED][row] if TEXT_POOLED in sample else None
                yield text_id, key, meta, sample[TEXT_TOKENS][row, : text["tokens"]], pooled
