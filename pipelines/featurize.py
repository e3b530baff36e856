"""One video -> one shard sample: probe, decode, encode, and record where every array came from.

This is the unit of work of an extraction run (one Dask task per video). The encoders are passed in,
loaded once per worker with :func:`load_encoders`, never per video.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lamflow import __version__ as lamflow_version
from lamflow.devices import require_device
from lamflow.pipelines import moment_detr
from lamflow.pipelines.audio_decode import decode_audio
from lamflow.pipelines.audio_models import AudioEncoder, load_audio_encoder
from lamflow.pipelines.audio_tokens import AudioTokenizer
from lamflow.pipelines.clip_encoder import ClipEncoder
from lamflow.pipelines.ffmpeg_process import ffmpeg_version
from lamflow.pipelines.probe import DecodeLog, MediaInfo, decoded_duration, duration_note, probe
from lamflow.pipelines.settings import ExtractSettings
from lamflow.pipelines.video_decode import iter_frames

# Streams whose first samples are further apart than this get a note: their timestamps are each
# measured from their own stream's start.
START_SKEW_NOTE_S = 0.1


def load_encoders(settings: ExtractSettings) -> tuple[ClipEncoder, AudioEncoder]:
    """What a worker calls once: the CLIP model and the audio encoder (log-mel or pretrained) for these settings."""
    settings.validate()
    require_device(settings.device, "device")  # on the worker: a cluster's workers may differ from the client
    clip = ClipEncoder(settings.clip_model, settings.pretrained, settings.device)
    if settings.preset == moment_detr.PRESET:
        moment_detr.check_encoder(clip)
    return clip, load_audio_encoder(settings)


def _check_encoders_match(settings: ExtractSettings, clip: ClipEncoder, audio: AudioEncoder) -> None:
    """Provenance is taken from the encoders, so they must be the ones the settings describe."""
    expected = {
        "clip_model": (settings.clip_model, clip.model_name),
        "pretrained": (settings.pretrained, clip.pretrained),
        "audio_model": (settings.audio_model, audio.model),
        "sample_rate": (settings.sample_rate, audio.sample_rate),
        "audio_hop": (settings.audio_hop, audio.hop),
    }
    if isinstance(audio, AudioTokenizer):
        expected["n_mels"] = (settings.n_mels, audio.n_mels)
    for field, (wanted, loaded) in expected.items():
        if wanted != loaded:
            raise ValueError(
                f"settings.{field}={wanted!r} but the loaded encoder has {loaded!r}; "
                f"build the encoders with load_encoders(settings)"
            )


def _encode_video(
    source: str, info: MediaInfo, settings: ExtractSettings, clip: ClipEncoder, log: DecodeLog
) -> tuple[np.ndarray, np.ndarray]:
    if settings.preset == moment_detr.PRESET:
        batches = moment_detr.encode_clips(source, info, clip, settings.frame_batch, log)
    else:
        batches = ((clip.encode_frames(frames), ts) for frames, ts in iter_frames(
            source, info, settings.fps, clip.image_size, settings.frame_rule, settings.frame_batch, log=log))
    embeddings, stamps = [], []
    for features, ts in batches:
        embeddings.append(features.astype(settings.dtype))
        stamps.append(ts)
    if not embeddings:
        return np.zeros((0, clip.embed_dim), settings.dtype), np.zeros(0, np.float32)
    return np.concatenate(embeddings), np.concatenate(stamps)


def _encode_texts(texts: list[dict], clip: ClipEncoder, settings: ExtractSettings) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    for i, item in enumerate(texts):
        if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("text"), str):
            raise ValueError(f"texts[{i}] must be a dict with 'id' and a string 'text', got {item!r}")
    strings = [item["text"] for item in texts]
    if settings.preset == moment_detr.PRESET:
        per_token, pooled, counts = moment_detr.encode_queries(clip, strings)
    else:
        per_token, pooled, counts = clip.encode_texts(strings)
    records = [{"id": str(item["id"]), "text": item["text"], "tokens": n} for item, n in zip(texts, counts)]
    return per_token.astype(settings.dtype), pooled.astype(settings.dtype), records


def featurize_video(
    source: str,
    key: str,
    settings: ExtractSettings,
    clip: ClipEncoder,
    audio: AudioEncoder,
    texts: list[dict] | None = None,
) -> dict[str, Any]:
    """Return the shard sample for ``source`` (fields of the shard contract); raise DecodeError for bad media.

    ``source`` is anything the ffmpeg binary opens: a local path or an http(s) URL (fetch other fsspec
    URLs to a local file first). Decoder complaints that did not lose content become meta.json notes.

    ``texts``: optional [{"id": str, "text": str}, ...] (queries/captions of this video) encoded with the
    same CLIP model's text tower into ``text.npy`` / ``text_pooled.npy``.
    """
    _check_encoders_match(settings, clip, audio)
    info = probe(source)
    log = DecodeLog()  # the streams' decoded lengths: headers can be wrong, tokens follow what was decoded
    notes = log.notes

    video, video_ts = _encode_video(source, info, settings, clip, log)
    if not info.has_video:
        notes.append(f"no video stream: video.npy is empty {video.shape}")

    if info.has_audio:
        wave = decode_audio(source, info, settings.sample_rate, log=log)
        audio_tokens, audio_ts = audio(wave)
        del wave  # the largest buffer of the whole sample; free it before returning
        audio_tokens = audio_tokens.astype(settings.dtype)
    else:
        audio_tokens, audio_ts = np.zeros((0, audio.dim), settings.dtype), np.zeros(0, np.float32)
        notes.append(f"no audio stream: audio.npy is empty {audio_tokens.shape}")

    if (header_note := duration_note(info, log)) is not None:
        notes.append(header_note)
    if info.has_video and info.has_audio and abs(info.video_start - info.audio_start) > START_SKEW_NOTE_S:
        notes.append(
            f"video starts at {info.video_start:.3f} s and audio at {info.audio_start:.3f} s in the container; "
            f"video_ts and audio_ts are each measured from their own stream's start"
        )
    if clip.random_init:
        notes.append("RANDOM CLIP WEIGHTS (pretrained='none'): video/text features carry no learned meaning")

    clip_provenance = clip.provenance()
    decoder = ffmpeg_version()
    frames_provenance = moment_detr.video_provenance(info) if settings.preset == moment_detr.PRESET else {
        "fps": settings.fps,
        "frame_rule": settings.frame_rule,
        "timestamps": (
            "k/fps: the frame on screen at the start of each interval" if settings.frame_rule == "start"
            else "(k+0.5)/fps: the frame on screen mid-interval (last frame, time capped at duration, "
                 "for a final partial interval)"
        ),
    }
    provenance: dict[str, Any] = {
        "video": {
            **clip_provenance,
            **frames_provenance,
            "timestamp_origin": "first frame of the video stream",
            "decoder": decoder,
            "dtype": settings.dtype,
        },
        "audio": {
            **audio.provenance(),
            "timestamp_origin": "first sample of the audio stream",
            "decoder": decoder,
            "dtype": settings.dtype,
        },
    }
    sample: dict[str, Any] = {
        "__key__": key,
        "video.npy": video,
        "video_ts.npy": video_ts,
        "audio.npy": audio_tokens,
        "audio_ts.npy": audio_ts,
    }
    meta: dict[str, Any] = {
        "key": key,
        "source": str(source),
        "duration": decoded_duration(info, log),
        "streams": info.to_json(),
        "counts": {"video": int(len(video)), "audio": int(len(audio_tokens))},
        "settings": settings.to_json(),
        "lamflow_version": lamflow_version,
        "notes": notes,
    }
    if texts:
        per_token, pooled, records = _encode_texts(texts, clip, settings)
        sample["text.npy"], sample["text_pooled.npy"] = per_token, pooled
        tokens_provenance = moment_detr.text_provenance() if settings.preset == moment_detr.PRESET else {
            "per_token": "ln_final output @ text_projection", "pooled": "model's pooled token (EOT)"}
        provenance["text"] = {**clip_provenance, "tower": "text", **tokens_provenance,
                              "padding": "zeros past each text's tokens", "dtype": settings.dtype}
        meta["texts"] = records
        meta["counts"]["text"] = len(records)
    meta["provenance"] = provenance
    sample["meta.json"] = meta
    return sample
