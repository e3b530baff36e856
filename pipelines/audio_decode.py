"""The audio of a media file as one mono float32 wave, decoded by ffmpeg to its real end.

The wave is decoded whole (an hour at 16 kHz is 230 MB); the audio encoders then work on it in bounded
chunks.
"""
from __future__ import annotations

import math

import ffmpeg
import numpy as np

from lamflow.pipelines.ffmpeg_process import STALL_TIMEOUT_S, FfmpegPipe, ffmpeg_input
from lamflow.pipelines.probe import DecodeLog, MediaInfo, duration_tolerance, judge_completeness


def decode_audio(
    path: str,
    info: MediaInfo,
    sample_rate: int = 16000,
    stall_timeout: float = STALL_TIMEOUT_S,
    log: DecodeLog | None = None,
) -> np.ndarray:
    """The first audio stream as mono float32 at ``sample_rate`` (channels averaged), to its real end;
    empty if the file has no audio.

    Samples past the header's duration are cut when they are within :func:`duration_tolerance` of it:
    encoders pad their last frame (AAC adds up to a frame of silence). Beyond that the header is wrong
    and everything decoded is kept. The length is stored in ``log.audio_seconds``; damage and shortness
    are judged as in :func:`lamflow.pipelines.video_decode.iter_frames`.
    """
    if not info.has_audio:
        return np.zeros(0, np.float32)
    log = log if log is not None else DecodeLog()
    cmd = (
        ffmpeg.input(ffmpeg_input(path))["a:0"]
        .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate)
        .global_args("-nostdin", "-v", "error")
        .compile()
    )
    pipe = FfmpegPipe(cmd, str(path), stall_timeout)
    try:
        # Sized reads (1 s each) keep the watchdog meaningful and avoid one giant transient buffer.
        chunks = []
        while chunk := pipe.read(4 * sample_rate):
            chunks.append(np.frombuffer(chunk, np.float32, count=len(chunk) // 4))
        messages = pipe.finish("audio decode")
    finally:
        pipe.close()
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    header = info.audio_duration
    if 0 < header and len(wave) / sample_rate <= header + duration_tolerance(header):
        wave = wave[: math.ceil(header * sample_rate)]
    seconds = log.audio_seconds = len(wave) / sample_rate
    judge_completeness(path, "audio", f"{seconds:.2f} s of the {header:.2f} s its header claims",
                        seconds < header - duration_tolerance(header), messages, log)
    return wave
