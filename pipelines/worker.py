"""What runs on a Dask worker: one task per input (a video, or an image in an image run), encoders loaded
once per worker process.

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

from lamflow.pipelines.settings import ClipSettings, ImageSettings
from lamflow.pipelines.sources import local_copy

_lock = threading.Lock()  # threads of one worker share the model; only one may load it
_cache: dict[ClipSettings, Any] = {}  # frozen dataclass: equal settings hash equal after pickling


def _load_encoders(settings: ClipSettings) -> Any:
    if isinstance(settings, ImageSettings):
        from lamflow.pipelines.images import load_image_encoder

        return load_image_encoder(settings)
    from lamflow.pipelines.featurize import load_encoders

    return load_encoders(settings)


def cached_encoders(settings: ClipSettings) -> Any:
    """The encoders of ``settings``, loaded on the first call in this process: for a video run (ClipEncoder,
    audio encoder: log-mel or pretrained), for an image run the ClipEncoder."""
    with _lock:
        if settings not in _cache:
            _cache.clear()  # free the previous model before loading another
            _cache[settings] = _load_encoders(settings)
        return _cache[settings]


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
    settings: ClipSettings,
    texts: list[dict[str, str]] | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> VideoOutcome:
    """Featurize one input into a shard sample: a video, or an image when ``settings`` are ImageSettings
    (``texts`` are a video run's). Never raises for bad media: the error is returned.

    Any exception becomes an error outcome (DecodeError for bad files, anything else for e.g. a
    pathological stream tripping an encoder), because one bad input must not stop a million-video run;
    the message keeps the exception type so bugs stay distinguishable from bad media in the manifest.
    """
    from lamflow.pipelines.featurize import featurize_video
    from lamflow.pipelines.images import featurize_image

    # Outside the try: a model that cannot load (bad --clip-model, missing weights) is the run's error,
    # not the input's, and must stop the run instead of filling the manifest with identical failures.
    encoders = cached_encoders(settings)
    start = time.perf_counter()
    try:
        with local_copy(source) as path:
            if isinstance(settings, ImageSettings):
                sample = featurize_image(path, key, settings, encoders)
            else:
                sample = featurize_video(path, key, settings, *encoders, texts=texts)
        sample["meta.json"] = {**sample["meta.json"], "source": source, **(extra_meta or {})}
        return VideoOutcome(source, key, sample, None, time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - recorded per input, see docstring
        message = f"{type(error).__name__}: {error}".strip()
        return VideoOutcome(source, key, None, message, time.perf_counter() - start)
