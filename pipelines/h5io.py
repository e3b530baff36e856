"""Feature-only datasets: MAD-style HDF5 files <-> lamflow shards.

A MAD-style file holds one dataset per video id, a T x D float array sampled at a fixed rate (e.g. CLIP
ViT-B/32 frames at 5 fps). ``import_h5`` turns it into the shard contract (the imported stream with
timestamps ``index / fps``; the other stream an empty (0, 0) array plus a note, since its dimension is
unknown), with the same manifest/resume machinery as video extraction. ``export_h5`` writes one stream of
a shard directory back as one dataset per video, named by the original id.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lamflow import __version__
from lamflow.contract import (
    EXTRACTION,
    IMAGE_STREAM,
    MEDIA_STREAMS,
    META,
    SHARDS_DIR,
    Record,
    final_shards,
    is_token_field,
    read_samples,
    sample_dims,
    tokens_field,
)
from lamflow.errors import DataFileError
from lamflow.fileio import commit_temp, read_json, temp_path
from lamflow.pipelines.keys import assign_keys
from lamflow.pipelines.manifest import OutputDir
from lamflow.pipelines.settings import DTYPES
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES

STREAMS = MEDIA_STREAMS
EXPORT_STREAMS = (*MEDIA_STREAMS, IMAGE_STREAM)  # an image run's patch tokens export too, one dataset per image
# One dataset is read into memory at a time; a header declaring more than this is refused before reading
# (a few-KB file can declare a multi-TiB dataset of unallocated chunks).
MAX_DATASET_BYTES = 16 * 2**30


@dataclass
class ImportSummary:
    out_dir: str
    datasets: int  # datasets found in the file
    imported: int  # written in this run
    skipped_done: int  # already imported by an earlier run
    shards_written: list[str]
    seconds: float


def _feature_datasets(h5: h5py.File, path: Path) -> list[str]:
    """Names of all datasets (nested groups included), checked to be T x D arrays."""
    names: list[str] = []

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise DataFileError(f"{path}: dataset {name!r} has shape {node.shape}; a MAD-style file holds T x D "
                                    "feature arrays, one per video id")
            if node.dtype.kind not in "fiu":
                raise DataFileError(f"{path}: dataset {name!r} has dtype {node.dtype}; expected numeric features")
            if node.nbytes > MAX_DATASET_BYTES:
                raise DataFileError(f"{path}: dataset {name!r} declares shape {node.shape} ({node.nbytes / 2**30:.1f} GiB), "
                                    f"more than the {MAX_DATASET_BYTES / 2**30:.0f} GiB one video's features can hold; "
                                    "the file is damaged or not a feature file")
            names.append(name)

    h5.visititems(visit)
    if not names:
        raise DataFileError(f"{path} holds no datasets; expected one T x D dataset per video id")
    return sorted(names)


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as error:  # h5py reports "file signature not found" etc. as OSError
        raise DataFileError(f"{path}: not a readable HDF5 file ({error})") from None


def _stored(array: np.ndarray, dtype: str | None) -> np.ndarray:
    """Keep float16/float32 as in the file (so export reproduces it bit for bit) unless ``dtype`` is given."""
    if dtype is not None:
        return array.astype(dtype)
    return array if array.dtype.name in DTYPES else array.astype(np.float32)


def _imported_sample(key: str, name: str, source: str, array: np.ndarray, stream: str, fps: float,
                     source_dtype: str, h5_path: Path) -> dict[str, Any]:
    other = next(s for s in STREAMS if s != stream)
    length = len(array)
    provenance = {
        stream: {"imported_from": str(h5_path), "dataset": name, "fps": fps, "timestamps": "index / fps",
                 "source_dtype": source_dtype, "dtype": array.dtype.name},
        other: {"missing": f"not in the imported file {h5_path.name}"},
    }
    return {
        "__key__": key,
        f"{stream}.npy": array,
        f"{stream}_ts.npy": (np.arange(length, dtype=np.float64) / fps).astype(np.float32),
        f"{other}.npy": np.zeros((0, 0), array.dtype),
        f"{other}_ts.npy": np.zeros(0, np.float32),
        "meta.json": {
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


def import_h5(
    h5_path: str | Path,
    out_dir: str | Path,
    stream: str = "video",
    fps: float = 1.0,
    dtype: str | None = None,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    overwrite: bool = False,
) -> ImportSummary:
    """Import every dataset of a MAD-style ``h5_path`` as one sample each; resumable like extraction."""
    if stream not in STREAMS:
        raise DataFileError(f"stream must be one of {STREAMS}, got {stream!r}")
    if not fps > 0:
        raise DataFileError(f"fps must be > 0 (feature rows per second of the h5 file), got {fps!r}")
    if dtype is not None and dtype not in DTYPES:
        raise DataFileError(f"dtype must be one of {DTYPES} or None (keep the file's), got {dtype!r}")
    h5_path = Path(h5_path).resolve()
    if not h5_path.is_file():
        raise DataFileError(f"h5 file {h5_path} does not exist")
    started = time.perf_counter()
    record = {"kind": "h5-import", "settings": {"file": str(h5_path), "stream": stream, "fps": fps, "dtype": dtype},
              "texts": None, "lamflow_version": __version__}
    output = OutputDir(Path(out_dir), record, overwrite=overwrite)
    try:
        with _open_h5(h5_path, "r") as h5:
            names = _feature_datasets(h5, h5_path)
            source_of = {name: f"{h5_path}#{name}" for name in names}
            keys = assign_keys(((source_of[n], n) for n in names), taken=output.keys_by_source())
            done = output.done_sources()
            todo = [n for n in names if source_of[n] not in done]
            with output.shard_sink(shard_samples, shard_bytes) as sink:
                for name in todo:
                    source = source_of[name]
                    raw = h5[name][()]
                    array = _stored(raw, dtype)
                    sample = _imported_sample(keys[source], name, source, array, stream, fps, raw.dtype.name, h5_path)
                    sink.write(sample, Record(keys[source], source, "ok", counts={stream: len(array)},
                                              dims=sample_dims(sample), duration=len(array) / fps, original_name=name))
        output.compact()
        output.write_summaries()
        return ImportSummary(str(out_dir), len(names), len(todo), len(names) - len(todo), sink.committed,
                             round(time.perf_counter() - started, 3))
    finally:
        output.close()


def export_h5(out_dir: str | Path, h5_path: str | Path, stream: str = "video") -> int:
    """Write ``stream`` of every sample in ``out_dir``'s shards to ``h5_path``; returns the dataset count.

    Datasets are named by each sample's original name (the h5 id of an import, the file stem of a
    video) so an import -> export round trip reproduces the file; names two samples share fall back to
    the sample key. Attributes record the key, the source and the rate. Written to a temp file first.
    """
    if stream not in EXPORT_STREAMS:
        raise DataFileError(f"stream must be one of {EXPORT_STREAMS}, got {stream!r}")
    out_dir = Path(out_dir)
    if not (out_dir / EXTRACTION).is_file():
        raise DataFileError(f"{out_dir} is not a lamflow output directory (no {EXTRACTION})")
    extraction = read_json(out_dir / EXTRACTION)
    shards = final_shards(out_dir / SHARDS_DIR)
    metas = {s["__key__"]: s[META] for shard in shards for s in read_samples(shard, {META})}
    originals = {key: str(meta.get("original_name") or key) for key, meta in metas.items()}
    shared = {name for name, n in Counter(originals.values()).items() if n > 1}
    name_of = {key: key if name in shared else name for key, name in originals.items()}
    h5_path = Path(h5_path)
    temp = temp_path(h5_path)
    count = 0
    with _open_h5(temp, "w") as h5:
        h5.attrs["lamflow_stream"] = stream
        h5.attrs["lamflow_extraction"] = json.dumps(extraction.get("settings"), sort_keys=True)
        for shard in shards:
            for sample in read_samples(shard):
                key, meta = sample["__key__"], sample[META]
                if tokens_field(stream) not in sample:
                    held = sorted(name[: -len(".npy")] for name in sample if is_token_field(name))
                    raise DataFileError(f"sample {key!r} of {out_dir} has no {stream!r} stream (it holds {held}); "
                                        "choose one of those with --stream")
                dataset = h5.create_dataset(name_of[key], data=sample[tokens_field(stream)])
                dataset.attrs["key"] = key
                dataset.attrs["source"] = str(meta.get("source", ""))
                rate = (meta.get("provenance", {}).get(stream) or {}).get("fps")
                if rate is not None:
                    dataset.attrs["fps"] = rate
                count += 1
    commit_temp(h5_path)
    return count
