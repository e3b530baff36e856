"""What runs on a Dask worker: one task per video, encoders loaded once per worker process.

The encoders live in a module-level cache, i.e. once per worker process (Dask ``processes=True``
workers each import this module once). The cache is keyed by the settings so a long-lived worker of an
existing cluster serving runs with other settings reloads instead of using the wrong model, and keeps
one model at a time so memory stays at one model per worker.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from lamflow.pipelines.settings import ExtractSettings
from lamflow.pipelines.sources import local_copy

_lock = threading.Lock()  # threads of one worker share the model; only one may load it
_cache: dict[ExtractSettings, Any] = {}  # frozen dataclass: equal settings hash equal after pickling
_counters = {"encoder_loads": 0, "videos": 0}


def cached_encoders(settings: ExtractSettings) -> tuple[Any, Any]:
    """(ClipEncoder, audio encoder: log-mel or pretrained) for ``settings``, loaded on the first call in this process."""
    from lamflow.pipelines.featurize import load_encoders

    with _lock:
        if settings not in _cache:
            _cache.clear()  # free the previous model before loading another
            _cache[settings] = load_encoders(settings)
            _counters["encoder_loads"] += 1
        return _cache[settings]


def worker_counters() -> dict[str, int]:
    """How often this worker process loaded encoders and how many videos it handled.

    Meant for ``client.run(worker_counters)``: the proof that models load once per worker.
    """
    return dict(_counters)


@dataclass
class VideoOutcome:
    """The result of one task, sent back to the client: a shard sample, or the error that stopped it."""

    source: str
    key: str
    sample: dict[str, Any] | None
    error: str | None
    seconds: float


def extract_video(
    source: str,
    key: str,
    settings: ExtractSettings,
    texts: list[dict[str, str]] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> VideoOutcome:
    """Featurize one video into a shard sample. Never raises for bad media: the error is returned.

    Any exception becomes an error outcome (DecodeError for bad files, anything else for e.g. a
    pathological stream tripping an encoder), because one bad input must not stop a million-video run;
    the message keeps the exception type so bugs stay distinguishable from bad media in the manifest.
    """
    from lamflow.pipelines.featurize import featurize_video

    # Outside the try: a model that cannot load (bad --clip-model, missing weights) is the run's error,
    # not the video's, and must stop the run instead of filling the manifest with identical failures.
    clip, audio = cached_encoders(settings)
    start = time.perf_counter()
    try:
        with local_copy(source) as path:
            sample = featurize_video(path, key, settings, clip, audio, texts=texts)
        sample["meta.json"] = {**sample["meta.json"], "source": source, **(extra_meta or {})}
        outcome = VideoOutcome(source, key, sample, None, time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - recorded per input, see docstring
        message = f"{type(error).__name__}: {error}".strip()
        outcome = VideoOutcome(source, key, None, message, time.perf_counter() - start)
    with _lock:
        _counters["videos"] += 1
    return outcome
