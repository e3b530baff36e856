"""moment_detr-style npz feature folders <-> lamflow shards.

The layout jayleicn/moment_detr's ``StartEndDataset`` reads, and QD-DETR, CG-DETR and Lighthouse read
with it (their released QVHighlights feature tarballs hold it)::

    FEATURES/clip_features/{vid}.npz           key "features": T x D, one row per 2-s clip
    FEATURES/slowfast_features/{vid}.npz       another video model, same rows (loaders cut every folder
                                               to the shortest T and concatenate them along D)
    FEATURES/clip_text_features/qid{qid}.npz   keys "last_hidden_state" (L x D, start to end token) and
                                               "pooler_output" (D)

``{vid}`` and ``{qid}`` are an annotation line's ``vid`` and ``qid`` as written. Loaders read every array
as float32 and L2-normalise it themselves. (QD-DETR and Lighthouse read PANN audio as ``pann_features/{vid}.npy``,
a bare array: :func:`import_npz` reads ``.npy`` files too.)

:func:`import_npz` makes one folder a shard set through feature_files.py, like ``import-h5``: a feature
folder one sample per ``{vid}`` (the stream with timestamps index / fps: 0.5 for 2-s clips), a query
folder one text-only sample per ``qid{qid}.npz`` (id ``{qid}``, so QVHighlights annotations join by qid,
with its ``pooler_output`` as ``text_pooled.npy``). Every file is checked from its headers before the
output is touched; arrays are read with ``allow_pickle=False``, so a pickled file is refused, never run.

:func:`export_npz` writes datasets back into the layout, one folder per stream (:func:`feature_folder`).
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

import numpy as np

from lamflow import __version__
from lamflow.contract import MEDIA_STREAMS, META, TEXT_POOLED, TEXT_STREAM, TEXT_TOKENS, npy_header, read_samples, tokens_field
from lamflow.errors import DataFileError
from lamflow.fileio import atomic_open
from lamflow.pipelines.feature_files import (
    ImportOptions,
    ImportSummary,
    Imported,
    check_array,
    check_text_rows,
    dataset_shards,
    import_arrays,
    sample_names,
)
from lamflow.pipelines.settings import MOMENT_DETR

FEATURES_KEY = "features"
HIDDEN_KEY = "last_hidden_state"
POOLED_KEY = "pooler_output"
QUERY_FILE = re.compile(r"^qid(.+)\.npz$")
_HEADER_BYTES = 4096  # enough for any .npy header numpy writes (contract.npy_header)
_VIDEO_FILE = "a feature folder holds one {vid}.npz per video with key 'features', a T x D array"
_QUERY_FILE = "a query folder holds one qid{qid}.npz per query with key 'last_hidden_state', an L x D array"


def _arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of an .npz archive's arrays, or {'': ...} for an .npy file, from headers only."""
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as handle:
                shape, dtype = npy_header(handle.read(_HEADER_BYTES))
                return {"": (shape, np.dtype(dtype))}
        with zipfile.ZipFile(path) as archive:
            arrays = {}
            for member in archive.namelist():
                if member.endswith(".npy"):
                    with archive.open(member) as handle:
                        shape, dtype = npy_header(handle.read(_HEADER_BYTES))
                    arrays[member[: -len(".npy")]] = (shape, np.dtype(dtype))
            return arrays
    except (zipfile.BadZipFile, ValueError, TypeError, EOFError) as error:
        raise DataFileError(f"{path}: not a readable {path.suffix} array file ({error})") from None


def _load(path: Path, key: str) -> np.ndarray:
    """One array of ``path``, never unpickled."""
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            return archive[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataFileError(f"{path}: cannot read array {key or 'of the file'!r} ({error})") from None


def _feature_files(folder: Path, stream: str) -> dict[str, Path]:
    """{id: file} of the folder: {vid}.npz / {vid}.npy for a feature folder, qid{qid}.npz for a query folder."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".npz", ".npy"))
    found: dict[str, Path] = {}
    for path in files:
        if stream == TEXT_STREAM:
            match = QUERY_FILE.match(path.name)
            if not match:
                raise DataFileError(f"{path}: not named qid<qid>.npz; {_QUERY_FILE}")
            name = match.group(1)
        else:
            name = path.stem
        if name in found:
            raise DataFileError(f"{found[name]} and {path} hold features of one id {name!r}; keep one of them")
        found[name] = path
    if not found:
        raise DataFileError(f"{folder} holds no .npz files; {_QUERY_FILE if stream == TEXT_STREAM else _VIDEO_FILE}")
    return found


def _check_feature_file(path: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[str, int, int]:
    """(key, rows, width) of a video/audio feature file, or a DataFileError saying what it is instead."""
    key = "" if path.suffix == ".npy" else FEATURES_KEY
    if key not in arrays:
        if HIDDEN_KEY in arrays:
            raise DataFileError(f"{path} holds {sorted(arrays)}: query features; import a query folder with --stream text")
        raise DataFileError(f"{path} has no key {FEATURES_KEY!r} (it holds {sorted(arrays)}); {_VIDEO_FILE}")
    shape, dtype = arrays[key]
    check_array(shape, dtype, f"{path}: {key or 'the array'!r}", _VIDEO_FILE)
    return key, shape[0], shape[1]


def _check_query_file(path: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[int, int]:
    """(tokens, width) of a query file (its pooler_output checked too), or a DataFileError."""
    if HIDDEN_KEY not in arrays:
        if FEATURES_KEY in arrays:
            raise DataFileError(f"{path} holds {sorted(arrays)}: video features; import a feature folder with "
                                "--stream video --fps RATE")
        raise DataFileError(f"{path} has no key {HIDDEN_KEY!r} (it holds {sorted(arrays)}); {_QUERY_FILE}")
    shape, dtype = arrays[HIDDEN_KEY]
    check_array(shape, dtype, f"{path}: {HIDDEN_KEY!r}", _QUERY_FILE)
    if POOLED_KEY in arrays:
        check_array(*arrays[POOLED_KEY], f"{path}: {POOLED_KEY!r}", "pooler_output is one D-wide vector", ndim=1)
    return shape[0], shape[1]


def _one_width(widths: dict[str, int], folder: Path) -> None:
    """Refuse a folder whose files disagree on the feature width: two feature types in one folder."""
    counts: dict[int, list[str]] = {}
    for name, width in widths.items():
        counts.setdefault(width, []).append(name)
    if len(counts) > 1:
        usual = max(counts, key=lambda width: len(counts[width]))
        odd = next(width for width in counts if width != usual)
        raise DataFileError(f"{folder}: {counts[odd][0]!r} has {odd} features per row where {len(counts[usual])} files "
                            f"have {usual}; one folder holds one feature type")


def import_npz(folder: str | Path, out_dir: str | Path, options: ImportOptions = ImportOptions()) -> ImportSummary:
    """Import every feature file of ``folder`` as one sample each; resumable like extraction.

    Stream video/audio: ``{vid}.npz`` (key ``features``) or ``{vid}.npy`` files of T x D rows at
    ``options.fps`` rows per second (0.5 for moment_detr's 2-s clips); stream text: ``qid{qid}.npz`` files
    (``last_hidden_state``, optional ``pooler_output``), no fps.
    """
    options.check("of the folder, e.g. 0.5 for moment_detr's 2-s clips")
    stream = options.stream
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise DataFileError(f"feature folder {folder} does not exist or is not a folder")
    files = _feature_files(folder, stream)
    headers = {name: _arrays(path) for name, path in files.items()}  # all checked before the output is touched
    if stream == TEXT_STREAM:
        shapes = {name: _check_query_file(files[name], arrays) for name, arrays in headers.items()}
        check_text_rows({name: rows for name, (rows, _) in shapes.items()}, folder, "file")
        keys = {name: HIDDEN_KEY for name in files}
    else:
        checked = {name: _check_feature_file(files[name], arrays) for name, arrays in headers.items()}
        shapes = {name: (rows, width) for name, (_, rows, width) in checked.items()}
        keys = {name: key for name, (key, _, _) in checked.items()}
    _one_width({name: width for name, (_, width) in shapes.items()}, folder)

    def read(name: str) -> Imported:
        path = files[name]
        pooled = _load(path, POOLED_KEY) if stream == TEXT_STREAM and POOLED_KEY in headers[name] else None
        return Imported(_load(path, keys[name]), {"imported_from": str(path), "feature_dir": folder.name,
                                                   "key": keys[name]}, pooled)

    record = {"kind": "npz-import", "settings": {"folder": str(folder), **options.recorded()},
              "texts": None, "lamflow_version": __version__}
    return import_arrays(list(files), read, lambda name: str(files[name]), out_dir, record, options, f"{folder.name}/")


# ---- export ----------------------------------------------------------------------------------------------
EXPORT_STREAMS = (*MEDIA_STREAMS, TEXT_STREAM)


@dataclass
class ExportSummary:
    out_dir: str
    files: dict[str, int] = field(default_factory=dict)  # feature folder -> files written
    skipped: dict[str, int] = field(default_factory=dict)  # stream -> samples whose stream was empty
    warnings: list[str] = field(default_factory=list)


def feature_folder(stream: str, provenance: dict[str, Any]) -> str:
    """The folder a stream's files go to: the folder it was imported from (``slowfast_features`` stays
    ``slowfast_features``); ``clip_features`` / ``clip_text_features`` for open_clip features, the names
    moment_detr's scripts read; ``<stream>_features`` for anything else (``audio_features``)."""
    if provenance.get("feature_dir"):
        return str(provenance["feature_dir"])
    if provenance.get("encoder") == "open_clip":
        return "clip_text_features" if stream == TEXT_STREAM else "clip_features"
    return f"{stream}_features"


def _file(out_dir: Path, folder: str, name: str) -> Path:
    """out_dir/folder/name.npz; a name that would leave the folder (absolute, '..') is refused."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise DataFileError(f"sample name {name!r} is not a file name inside {folder}/; rename the input")
    return out_dir / folder / f"{name}.npz"


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **{key: value.astype(np.float32) for key, value in arrays.items()})


def _provenance_warnings(root: Path, provenance: dict[str, Any]) -> list[str]:
    """What a published model trained on moment_detr's features would find different in this dataset's."""
    warnings = []
    for stream in ("video", TEXT_STREAM):
        source = provenance.get(stream) or {}
        if source.get("encoder") == "open_clip" and source.get("preset") != MOMENT_DETR:
            warnings.append(f"{root}: {stream} features are lamflow's own (L2-normalised, projected; video at "
                            f"{source.get('fps', '?')} fps), not moment_detr's: extract with --preset {MOMENT_DETR} "
                            "for features a published checkpoint was trained on")
    return warnings


def export_npz(datasets: Sequence[str | Path], out_dir: str | Path, streams: Iterable[str] | None = None) -> ExportSummary:
    """Write the streams (all of ``EXPORT_STREAMS``, or ``streams``) of every sample of ``datasets`` into
    ``out_dir`` in moment_detr's layout: ``<folder>/{name}.npz`` with ``features`` (T x D float32) per
    video/audio stream, ``<folder>/qid{id}.npz`` with ``last_hidden_state`` (L x D) and, when the shards
    hold one, ``pooler_output`` (D) per text; the folder by :func:`feature_folder`. Names are the samples'
    original names (the vid of a QVHighlights video file or an import). Empty streams are skipped and
    counted; two datasets writing one folder are refused. Each file is written atomically."""
    wanted = tuple(streams or EXPORT_STREAMS)
    unknown = sorted(set(wanted) - set(EXPORT_STREAMS))
    if unknown:
        raise DataFileError(f"stream(s) {unknown} are not in moment_detr's layout; choose from {EXPORT_STREAMS}")
    out_dir = Path(out_dir)
    summary = ExportSummary(str(out_dir))
    writer_of: dict[str, Path] = {}  # folder -> the dataset writing it
    written: set[Path] = set()
    for root in map(Path, datasets):
        _, shards = dataset_shards(root)
        names = sample_names(shards)
        warned: set[str] = set()
        for shard in shards:
            for sample in read_samples(shard):
                meta = sample[META]
                provenance = meta.get("provenance") or {}
                for warning in _provenance_warnings(root, provenance):
                    if warning not in warned:
                        warned.add(warning)
                        summary.warnings.append(warning)
                for folder, name, arrays in _sample_files(sample, names[sample["__key__"]], provenance, wanted, summary):
                    if writer_of.setdefault(folder, root) != root:
                        raise DataFileError(f"{writer_of[folder]} and {root} both write {out_dir / folder}; export "
                                            "them to different --out folders")
                    path = _file(out_dir, folder, name)
                    if path in written:
                        raise DataFileError(f"two samples of {root} give {path} (text ids and sample names must be "
                                            "unique); fix the duplicate id")
                    written.add(path)
                    _write(path, arrays)
                    summary.files[folder] = summary.files.get(folder, 0) + 1
    if not summary.files:
        raise DataFileError(f"no sample of {', '.join(map(str, datasets))} holds {' or '.join(wanted)} features to export")
    return summary


def _sample_files(sample: dict[str, Any], name: str, provenance: dict[str, Any], wanted: Sequence[str],
                  summary: ExportSummary) -> Iterable[tuple[str, str, dict[str, np.ndarray]]]:
    """(folder, file name, arrays) of every file one sample gives."""
    for stream in MEDIA_STREAMS:
        array = sample.get(tokens_field(stream))
        if stream not in wanted or array is None:
            continue
        if array.ndim != 2 or not array.size:
            summary.skipped[stream] = summary.skipped.get(stream, 0) + 1
            continue
        yield feature_folder(stream, provenance.get(stream) or {}), name, {FEATURES_KEY: array}
    if TEXT_STREAM in wanted:
        folder = feature_folder(TEXT_STREAM, provenance.get(TEXT_STREAM) or {})
        for row, text in enumerate(sample[META].get("texts") or []):
            arrays = {HIDDEN_KEY: sample[TEXT_TOKENS][row, : text["tokens"]]}
            if TEXT_POOLED in sample:
                arrays[POOLED_KEY] = sample[TEXT_POOLED][row]
            yield folder, f"qid{text['id']}", arrays
