"""Small files in MAD's layout, written with h5py and json as MAD ships them.

- frames: ``CLIP_frames_features_5fps.h5``, one T x D float32 dataset per movie id (5 rows per second);
- language: ``CLIP_language_tokens_features.h5``, one n_words x D float32 dataset per sentence id;
- annotations: ``MAD_{split}.json``, one object ``{sentence id: {movie, sentence, timestamps,
  ext_timestamps, movie_duration}}``.

Features are random: the tests check the joins, the cut and the trainer's plumbing, not accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

FPS = 5.0
D_FRAMES, D_WORDS = 16, 12


def write_frames(path: Path, movies: Mapping[str, float], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{movie id: seconds} -> the frames file; returns the arrays written."""
    arrays = {movie: rng.standard_normal((int(seconds * FPS), D_FRAMES)).astype(np.float32) for movie, seconds in movies.items()}
    with h5py.File(path, "w") as h5:
        for movie, array in arrays.items():
            h5.create_dataset(movie, data=array)
    return arrays


def write_language(path: Path, words: Mapping[str, int], rng: np.random.Generator, dtype: str = "float32") -> dict[str, np.ndarray]:
    """{sentence id: n_words} -> the language file; returns the arrays written."""
    arrays = {sentence: rng.standard_normal((n, D_WORDS)).astype(dtype) for sentence, n in words.items()}
    with h5py.File(path, "w") as h5:
        for sentence, array in arrays.items():
            h5.create_dataset(sentence, data=array)
    return arrays


def annotation(movie: str, sentence: str, start: float, end: float, duration: float, ext: bool = True) -> dict:
    """One MAD entry; ``ext`` adds ``ext_timestamps`` (MAD's files carry both; their baselines read ext)."""
    entry = {"movie": movie, "sentence": sentence, "timestamps": [start, end], "movie_duration": duration}
    if ext:
        entry["ext_timestamps"] = [start, end]
    return entry


def write_annotations(path: Path, entries: Mapping[str, dict]) -> Path:
    path.write_text(json.dumps(dict(entries)))  # one line, as MAD's json files are
    return path
