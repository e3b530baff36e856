"""Feature-only datasets: MAD-style HDF5 files <-> lamflow shards.

A MAD-style feature file holds one dataset per video id, a T x D float array sampled at a fixed rate (e.g.
CLIP ViT-B/32 frames at 5 fps). ``import_h5`` turns it into the shard contract (the imported stream with
timestamps ``index / fps``; the other stream an empty (0, 0) array plus a note, since its dimension is
unknown), with the same manifest/resume machinery as video extraction.

A MAD-style language file (``CLIP_language_tokens_features.h5``) holds one dataset per sentence id, an
n_words x D array of token features. ``import_h5`` with stream text makes one sample per sentence:
``text.npy`` is 1 x n_words x D (the contract's K x L x D text layout, K = 1) and ``meta.json`` lists
``texts: [{"id": <sentence id>, "tokens": n_words}]``; there is no video or audio stream and no rate. Such a
shard set is what ``lamflow.datasets.texts.TextStore`` reads query tokens from.

The two kinds are told apart where it is cheap to be wrong: a dataset longer than 512 rows (``MAX_TEXT_TOKENS``)
imported as text is refused (it is frames), and a file imported as video/audio whose datasets are mostly
sentence-short and named by integers gets a warning in the summary (it is probably a language file).

Every id of a file is imported, whatever characters it holds (distinct keys for distinct ids), and a
dataset holding NaN or inf values is recorded as a failure of its id: the rules of every feature-file
import, in feature_files.py, which also writes the samples.

``export_h5`` writes one stream of a dataset (one run or a partitioned tree) back as one dataset per video
(named by the original id), or for ``text`` one dataset per text id, so import -> export round-trips both
kinds of file.
"""
from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

import h5py

from lamflow import __version__
from lamflow.contract import IMAGE_STREAM, TEXT_STREAM
from lamflow.errors import DataFileError
from lamflow.fileio import commit_temp, temp_path
from lamflow.pipelines.feature_files import (
    STREAMS,
    ImportOptions,
    ImportSummary,
    Imported,
    check_array,
    check_text_rows,
    dataset_shards,
    import_arrays,
    stream_arrays,
    text_arrays,
)

log = logging.getLogger(__name__)

EXPORT_STREAMS = (*STREAMS, IMAGE_STREAM)  # an image run's patch tokens export too, one dataset per image
# A video/audio import whose datasets are mostly at most this long (CLIP's text context) and mostly named by
# integers (MAD's sentence ids, "1050") is a language file imported by mistake: the summary warns.
SENTENCE_ROWS = 77


def _what(stream: str) -> str:
    if stream == TEXT_STREAM:
        return "a MAD-style language file holds one n_words x D token array per sentence id"
    return "a MAD-style feature file holds one T x D feature array per video id"


def _feature_datasets(h5: h5py.File, path: Path, stream: str) -> dict[str, tuple[int, int]]:
    """{name: (rows, width)} of all datasets (nested groups included), checked to be non-empty 2-D arrays."""
    shapes: dict[str, tuple[int, int]] = {}

    def visit(name: str, node: Any) -> None:
        if isinstance(node, h5py.Dataset):
            check_array(node.shape, node.dtype, f"{path}: dataset {name!r}", _what(stream))
            shapes[name] = (int(node.shape[0]), int(node.shape[1]))

    h5.visititems(visit)
    if not shapes:
        raise DataFileError(f"{path} holds no datasets; {_what(stream)}")
    return dict(sorted(shapes.items()))


def _check_kind(shapes: dict[str, tuple[int, int]], path: Path, stream: str) -> list[str]:
    """Refuse frames imported as text; return a warning for a language file imported as video/audio."""
    rows = {name: shape[0] for name, shape in shapes.items()}
    if stream == TEXT_STREAM:
        check_text_rows(rows, path, "dataset")
        return []
    short = sum(n <= SENTENCE_ROWS for n in rows.values())
    numbered = sum(name.isdigit() for name in rows)
    if 2 * short > len(rows) and 2 * numbered > len(rows):
        return [f"{numbered} of {len(rows)} datasets are named by integers and {short} have at most {SENTENCE_ROWS} "
                f"rows (median {statistics.median(rows.values()):g}): this looks like a language-token file (sentence "
                f"id -> n_words x D, e.g. MAD's CLIP_language_tokens_features.h5), not {stream} features; "
                "import it with --stream text"]
    return []


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as error:  # h5py reports "file signature not found" etc. as OSError
        raise DataFileError(f"{path}: not a readable HDF5 file ({error})") from None


def import_h5(h5_path: str | Path, out_dir: str | Path, options: ImportOptions = ImportOptions()) -> ImportSummary:
    """Import every dataset of a MAD-style ``h5_path`` as one sample each; resumable like extraction.

    Stream video/audio: a feature file (one T x D array per video id, ``options.fps`` rows per second,
    required); stream text: a language file (one n_words x D array per sentence id; no fps).
    """
    options.check("of the h5 file, e.g. 5 for MAD's CLIP frames")
    h5_path = Path(h5_path).resolve()
    if not h5_path.is_file():
        raise DataFileError(f"h5 file {h5_path} does not exist")
    record = {"kind": "h5-import", "settings": {"file": str(h5_path), **options.recorded()},
              "texts": None, "lamflow_version": __version__}
    with _open_h5(h5_path, "r") as h5:  # checked before the output directory is touched
        shapes = _feature_datasets(h5, h5_path, options.stream)
    warnings = _check_kind(shapes, h5_path, options.stream)
    for warning in warnings:
        log.warning("%s: %s", h5_path, warning)
    with _open_h5(h5_path, "r") as h5:
        return import_arrays(
            list(shapes), lambda name: Imported(h5[name][()], {"imported_from": str(h5_path), "dataset": name}),
            lambda name: f"{h5_path}#{name}", out_dir, record, options, h5_path.name, warnings,
        )


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
    extraction, shards = dataset_shards(out_dir)
    datasets = (((text_id, key, meta, tokens) for text_id, key, meta, tokens, _ in text_arrays(shards))
                if stream == TEXT_STREAM else stream_arrays(shards, stream))
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
