"""Feature-only datasets: MAD-style HDF5 files <-> lamflow shards.

A MAD-style feature file holds one dataset per video id, a T x D float array sampled at a fixed rate (e.g.
CLIP ViT-B/32 frames at 5 fps). ``import_h5`` turns it into the shard contract (the imported stream with
timestamps ``index / fps``; the other stream an empty (0, 0) array plus a note, since its dimension is
unknown), with the same manifest/resume machinery as video extraction.

A MAD-style language file (``CLIP_language_tokens_features.h5``) holds one dataset per sentence id, an
n_words x D array of token features. ``import_h5(..., stream="text")`` makes one sample per sentence:
``text.npy`` is 1 x n_words x D (the contract's K x L x D text layout, K = 1) and ``meta.json`` lists
``texts: [{"id": <sentence id>, "tokens": n_words}]``; there is no video or audio stream and no rate. Such a
shard set is what ``lamflow.datasets.texts.TextStore`` reads query tokens from.

The two kinds are told apart where it is cheap to be wrong: a dataset longer than ``MAX_TEXT_TOKENS`` rows
imported as text is refused (it is frames), and a file imported as video/audio whose datasets are mostly
sentence-short and named by integers gets a warning in the summary (it is probably a language file).

Every id of a file is imported, whatever characters it holds: a sample's key is :func:`dataset_keys`'s, and
the id itself is kept as the sample's original name. A dataset holding NaN or inf values is recorded as a
failure of its id (every reader would skip the sample), the rest of the file is imported.

``export_h5`` writes one stream of a shard directory back as one dataset per video (named by the original
id), or for ``text`` one dataset per text id, so import -> export round-trips both kinds of file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from lamflow import __version__
from lamflow.contract import (
    EXTRACTION,
    IMAGE_STREAM,
    MAX_KEY_LENGTH,
    MEDIA_STREAMS,
    META,
    SHARDS_DIR,
    TEXT_STREAM,
    TEXT_TOKENS,
    Record,
    final_shards,
    is_token_field,
    read_samples,
    safe_key,
    sample_dims,
    tokens_field,
)
from lamflow.errors import DataFileError
from lamflow.fileio import commit_temp, read_json, temp_path
from lamflow.pipelines.keys import assign_keys
from lamflow.pipelines.manifest import OutputDir
from lamflow.pipelines.settings import DTYPES
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES

log = logging.getLogger(__name__)

STREAMS = (*MEDIA_STREAMS, TEXT_STREAM)  # what a file imports as
EXPORT_STREAMS = (*STREAMS, IMAGE_STREAM)  # an image run's patch tokens export too, one dataset per image
# One dataset is read into memory at a time; a header declaring more than this is refused before reading
# (a few-KB file can declare a multi-TiB dataset of unallocated chunks).
MAX_DATASET_BYTES = 16 * 2**30
# CLIP's text context is 77 tokens and BERT-style encoders stop at 512: a "sentence" with more rows is a
# frames array (a 2-hour movie at 5 fps has 36,000), so importing it as text is refused.
MAX_TEXT_TOKENS = 512
# A video/audio import whose datasets are mostly at most this long (CLIP's text context) and mostly named by
# integers (MAD's sentence ids, "1050") is a language file imported by mistake: the summary warns.
SENTENCE_ROWS = 77
_ID_DIGEST_HEX = 8  # hex digits of sha1(id) that set apart ids of one safe key (a 1 in 4 billion clash)


@dataclass
class ImportSummary:
    out_dir: str
    datasets: int  # datasets found in the file
    imported: int  # written in this run
    skipped_done: int  # already imported by an earlier run
    shards_written: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)  # what the file looks like, when it is not what --stream says
    failures: dict[str, str] = field(default_factory=dict)  # id -> why it was not imported (recorded in the manifest)


def _what(stream: str) -> str:
    if stream == TEXT_STREAM:
        return "a MAD-style language file holds one n_words x D token array per sentence id"
    return "a MAD-style feature file holds one T x D feature array per video id"


def _feature_datasets(h5: h5py.File, path: Path, stream: str) -> dict[str, tuple[int, int]]:
    """{name: (rows, width)} of all datasets (nested groups included), checked to be non-empty 2-D arrays."""
    shapes: dict[str, tuple[int, int]] = {}

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise DataFileError(f"{path}: dataset {name!r} has shape {node.shape}; {_what(stream)}")
            if node.dtype.kind not in "fiu":
                raise DataFileError(f"{path}: dataset {name!r} has dtype {node.dtype}; expected numeric features")
            if 0 in node.shape:
                raise DataFileError(f"{path}: dataset {name!r} is empty (shape {node.shape}); {_what(stream)}, "
                                    "with at least one row and one feature: remove or re-extract it")
            if node.nbytes > MAX_DATASET_BYTES:
                raise DataFileError(f"{path}: dataset {name!r} declares shape {node.shape} ({node.nbytes / 2**30:.1f} GiB), "
                                    f"more than the {MAX_DATASET_BYTES / 2**30:.0f} GiB one video's features can hold; "
                                    "the file is damaged or not a feature file")
            shapes[name] = (int(node.shape[0]), int(node.shape[1]))

    h5.visititems(visit)
    if not shapes:
        raise DataFileError(f"{path} holds no datasets; {_what(stream)}")
    return dict(sorted(shapes.items()))


def _check_kind(shapes: dict[str, tuple[int, int]], path: Path, stream: str) -> list[str]:
    """Refuse frames imported as text; return a warning for a language file imported as video/audio."""
    rows = {name: shape[0] for name, shape in shapes.items()}
    if stream == TEXT_STREAM:
        long = sorted((name for name, n in rows.items() if n > MAX_TEXT_TOKENS), key=lambda name: -rows[name])
        if long:
            raise DataFileError(
                f"{path}: dataset {long[0]!r} has {rows[long[0]]} rows ({len(long)} of {len(rows)} datasets have more "
                f"than {MAX_TEXT_TOKENS}); a sentence's token features are shorter, so this looks like a frames file: "
                "import it with --stream video --fps RATE"
            )
        return []
    short = sum(n <= SENTENCE_ROWS for n in rows.values())
    numbered = sum(name.isdigit() for name in rows)
    if 2 * short > len(rows) and 2 * numbered > len(rows):
        return [f"{numbered} of {len(rows)} datasets are named by integers and {short} have at most {SENTENCE_ROWS} "
                f"rows (median {statistics.median(rows.values()):g}): this looks like a language-token file (sentence "
                f"id -> n_words x D, e.g. MAD's CLIP_language_tokens_features.h5), not {stream} features; "
                "import it with --stream text"]
    return []


def dataset_keys(ids: Iterable[str]) -> dict[str, str]:
    """{dataset id: sample key} for the ids of one file: :func:`safe_key` of the id, unless other ids of the
    file have that safe key too (``a.b.c`` and ``a_b_c``). Then an id that is not itself that key gets
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
    """Why ``array`` (the dataset ``raw`` as it will be stored) cannot be imported, or None: NaN or inf
    values, which every reader of the features refuses."""
    finite = np.isfinite(array)
    if finite.all():
        return None
    bad_values, bad_rows = array.size - int(np.count_nonzero(finite)), int(np.count_nonzero(~finite.all(axis=1)))
    where = f"{bad_values} of {array.size} values, in {bad_rows} of {len(array)} rows"
    if np.isfinite(raw).all():
        return (f"NaN or inf in the features ({where}): the file's {raw.dtype} values overflow {array.dtype}; "
                "import with a wider --dtype")
    return f"NaN or inf in the features ({where}); every reader skips such a sample: fix or drop the dataset"


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as error:  # h5py reports "file signature not found" etc. as OSError
        raise DataFileError(f"{path}: not a readable HDF5 file ({error})") from None


def _stored(array: np.ndarray, dtype: str | None) -> np.ndarray:
    """Keep float16/float32 as in the file (so export reproduces it bit for bit) unless ``dtype`` is given."""
    if dtype is not None:
        with np.errstate(over="ignore"):  # an overflow becomes inf, which _non_finite reports as the id's failure
            return array.astype(dtype)
    return array if array.dtype.name in DTYPES else array.astype(np.float32)


def _imported_sample(key: str, name: str, source: str, array: np.ndarray, stream: str, fps: float,
                     source_dtype: str, h5_path: Path) -> dict[str, Any]:
    other = next(s for s in MEDIA_STREAMS if s != stream)
    length = len(array)
    provenance = {
        stream: {"imported_from": str(h5_path), "dataset": name, "fps": fps, "timestamps": "index / fps",
                 "source_dtype": source_dtype, "dtype": array.dtype.name},
        other: {"missing": f"not in the imported file {h5_path.name}"},
    }
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
            "provenance": provenance,
            "notes": [f"imported {stream} features from {h5_path.name}; no {other} stream: {other}.npy is empty (0, 0)"],
            "lamflow_version": __version__,
        },
    }


def _text_sample(key: str, name: str, source: str, array: np.ndarray, source_dtype: str, h5_path: Path) -> dict[str, Any]:
    """One sentence: its n_words x D tokens as a 1 x n_words x D ``text.npy``, its id in ``meta.json`` texts."""
    length = len(array)
    return {
        "__key__": key,
        TEXT_TOKENS: array[None],
        META: {
            "key": key,
            "source": source,
            "original_name": name,
            "texts": [{"id": name, "tokens": length}],
            "streams": {TEXT_STREAM: {"tokens": length, "dim": int(array.shape[1])}},
            "counts": {TEXT_STREAM: 1},
            "provenance": {TEXT_STREAM: {"imported_from": str(h5_path), "dataset": name, "source_dtype": source_dtype,
                                         "dtype": array.dtype.name}},
            # One wording for every sample (the id is in texts), so inspect groups them as one note.
            "notes": [f"imported text tokens from {h5_path.name}: a text-only sample, no video or audio stream"],
            "lamflow_version": __version__,
        },
    }


def import_h5(
    h5_path: str | Path,
    out_dir: str | Path,
    stream: str = "video",
    fps: float | None = None,
    dtype: str | None = None,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> ImportSummary:
    """Import every dataset of a MAD-style ``h5_path`` as one sample each; resumable like extraction.

    ``stream`` video/audio: a feature file (one T x D array per video id, ``fps`` rows per second, required);
    ``stream`` text: a language file (one n_words x D array per sentence id; ``fps`` must be None).
    """
    if stream not in STREAMS:
        raise DataFileError(f"stream must be one of {STREAMS}, got {stream!r}")
    if stream == TEXT_STREAM and fps is not None:
        raise DataFileError(f"fps={fps!r} does not apply to stream text: sentence tokens have no rate; leave --fps out")
    if stream != TEXT_STREAM and not (isinstance(fps, (int, float)) and fps > 0):
        raise DataFileError(f"fps must be > 0 for stream {stream} (feature rows per second of the h5 file, e.g. 5 "
                            f"for MAD's CLIP frames), got {fps!r}")
    if dtype is not None and dtype not in DTYPES:
        raise DataFileError(f"dtype must be one of {DTYPES} or None (keep the file's), got {dtype!r}")
    h5_path = Path(h5_path).resolve()
    if not h5_path.is_file():
        raise DataFileError(f"h5 file {h5_path} does not exist")
    started = time.perf_counter()
    record = {"kind": "h5-import", "settings": {"file": str(h5_path), "stream": stream, "fps": fps, "dtype": dtype},
              "texts": None, "lamflow_version": __version__}
    with _open_h5(h5_path, "r") as h5:  # checked before the output directory is touched
        shapes = _feature_datasets(h5, h5_path, stream)
    warnings = _check_kind(shapes, h5_path, stream)
    for warning in warnings:
        log.warning("%s: %s", h5_path, warning)
    names = list(shapes)
    output = OutputDir(Path(out_dir), record, overwrite=overwrite)
    try:
        with _open_h5(h5_path, "r") as h5:
            source_of = {name: f"{h5_path}#{name}" for name in names}
            planned = {source_of[name]: key for name, key in dataset_keys(names).items()}
            # assign_keys keeps the keys it is given (an earlier run's first) and refuses a clash
            keys = assign_keys(((source_of[n], n) for n in names), taken={**planned, **output.keys_by_source()})
            done = output.done_sources()
            todo = [n for n in names if source_of[n] not in done]
            failures: dict[str, str] = {}
            with output.shard_sink(shard_samples, shard_bytes) as sink:
                for name in todo:
                    source, key = source_of[name], keys[source_of[name]]
                    raw = h5[name][()]
                    array = _stored(raw, dtype)
                    if problem := _non_finite(raw, array):
                        output.append([Record(key, source, "error", error=problem, original_name=name)])
                        failures[name] = problem
                        continue
                    if stream == TEXT_STREAM:
                        sample = _text_sample(key, name, source, array, raw.dtype.name, h5_path)
                        entry = Record(key, source, "ok", counts={TEXT_STREAM: 1}, dims=sample_dims(sample),
                                       original_name=name)
                    else:
                        sample = _imported_sample(key, name, source, array, stream, fps, raw.dtype.name, h5_path)
                        entry = Record(key, source, "ok", counts={stream: len(array)}, dims=sample_dims(sample),
                                       duration=len(array) / fps, original_name=name)
                    sink.write(sample, entry)
        output.compact()
        output.write_summaries()
        return ImportSummary(str(out_dir), len(names), len(todo) - len(failures), len(names) - len(todo), sink.committed,
                             round(time.perf_counter() - started, 3), warnings, failures)
    finally:
        output.close()


def _stream_datasets(shards: list[Path], stream: str) -> Iterator[tuple[str, str, dict, np.ndarray]]:
    """(dataset name, key, meta, array) of ``stream`` for every sample: named by the sample's original name
    (the h5 id of an import, the file stem of a video), or by its key where two samples share a name."""
    metas = {s["__key__"]: s[META] for shard in shards for s in read_samples(shard, {META})}
    originals = {key: str(meta.get("original_name") or key) for key, meta in metas.items()}
    shared = {name for name, n in Counter(originals.values()).items() if n > 1}
    for shard in shards:
        for sample in read_samples(shard):
            key, meta = sample["__key__"], sample[META]
            if tokens_field(stream) not in sample:
                held = sorted(name[: -len(".npy")] for name in sample if is_token_field(name))
                raise DataFileError(f"{shard}: sample {key!r} has no {stream} stream (it holds {held}); "
                                    "export a stream the samples hold with --stream")
            yield key if originals[key] in shared else originals[key], key, meta, sample[tokens_field(stream)]


def _text_datasets(shards: list[Path]) -> Iterator[tuple[str, str, dict, np.ndarray]]:
    """(text id, key, meta, n_words x D tokens) of every text of every sample; samples without texts are
    passed over. An id two samples share is an error (one dataset per sentence id)."""
    owner: dict[str, str] = {}
    for shard in shards:
        for sample in read_samples(shard):
            key, meta = sample["__key__"], sample[META]
            for row, text in enumerate(meta.get("texts") or []):
                text_id = str(text["id"])
                if text_id in owner:
                    raise DataFileError(f"text id {text_id!r} is in samples {owner[text_id]!r} and {key!r}; a language "
                                        "file holds one dataset per id")
                owner[text_id] = key
                yield text_id, key, meta, sample[TEXT_TOKENS][row, : text["tokens"]]


def export_h5(out_dir: str | Path, h5_path: str | Path, stream: str = "video") -> int:
    """Write ``stream`` of every sample in ``out_dir``'s shards to ``h5_path``; returns the dataset count.

    video/audio: one dataset per sample, named by its original name (the h5 id of an import, the file stem
    of a video; the sample key where two samples share a name); attributes key, source and fps. text: one
    n_words x D dataset per text, named by its id (a sentence id of ``import-h5 --stream text``, a query id
    of ``extract --texts``); attributes key and source. So import -> export reproduces the file. Written to
    a temp file first; nothing is left behind on an error.
    """
    if stream not in EXPORT_STREAMS:
        raise DataFileError(f"stream must be one of {EXPORT_STREAMS}, got {stream!r}")
    out_dir = Path(out_dir)
    if not (out_dir / EXTRACTION).is_file():
        raise DataFileError(f"{out_dir} is not a lamflow output directory (no {EXTRACTION})")
    extraction = read_json(out_dir / EXTRACTION)
    shards = final_shards(out_dir / SHARDS_DIR)
    datasets = _text_datasets(shards) if stream == TEXT_STREAM else _stream_datasets(shards, stream)
    h5_path = Path(h5_path)
    temp = temp_path(h5_path)
    count = 0
    try:
        with _open_h5(temp, "w") as h5:
            h5.attrs["lamflow_stream"] = stream
            h5.attrs["lamflow_extraction"] = json.dumps(extraction.get("settings"), sort_keys=True)
            for name, key, meta, array in datasets:
                dataset = h5.create_dataset(name, data=array)
                dataset.attrs["key"] = key
                dataset.attrs["source"] = str(meta.get("source", ""))
                rate = (meta.get("provenance", {}).get(stream) or {}).get("fps")
                if rate is not None:
                    dataset.attrs["fps"] = rate
                count += 1
        if not count:
            raise DataFileError(f"{out_dir}: no sample holds {stream} data to export")
        commit_temp(h5_path)
    finally:
        temp.unlink(missing_ok=True)
    return count
