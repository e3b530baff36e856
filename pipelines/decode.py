"""Probe and decode media with the ffmpeg binary in a subprocess.

Everything runs in a child process (built with ffmpeg-python), so a file that crashes or hangs the
decoder cannot take the calling worker down: crashes surface as a non-zero exit status, hangs are cut
by timeouts, and both become :class:`DecodeError` naming the file.

Frames are selected, scaled and center-cropped inside ffmpeg's filter graph and streamed through a
pipe ``batch`` frames at a time, so memory is bounded by the batch, never by the video's length or
frame rate. Audio is decoded whole as mono float32 (an hour at 16 kHz is 230 MB); the audio tokenizer
then works on it in bounded chunks.
"""
from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import ffmpeg
import numpy as np

PROBE_TIMEOUT_S = 30.0
AUDIO_SHORTFALL_S = 0.1  # decoded audio this much shorter than its stream header says counts as short
# A decode is cut when ffmpeg produces no output for this long (a hung decoder); slow-but-moving is fine.
STALL_TIMEOUT_S = 60.0
MAX_MESSAGES = 20  # ffmpeg error lines kept per decode (a damaged file can print thousands)


class DecodeError(Exception):
    """A media file could not be probed or decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a file: the parts extraction needs, JSON-friendly for meta.json."""

    path: str
    duration: float  # seconds, from the container (or the longest stream when the container has none)
    format_name: str
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    video_fps: float = 0.0  # average frame rate
    video_codec: str = ""
    video_start: float = 0.0  # stream start time in the container, seconds
    video_duration: float = 0.0  # the video stream's own duration (the container's when it has none)
    audio_rate: int = 0
    audio_channels: int = 0
    audio_codec: str = ""
    audio_start: float = 0.0
    audio_duration: float = 0.0  # the audio stream's own duration (the container's when it has none)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    """First line of ``ffmpeg -version`` (recorded in provenance); cached per process."""
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


def _rate(text: str | None) -> float:
    """ffprobe rates are fractions like '30000/1001'; '0/0' means unknown."""
    if not text:
        return 0.0
    num, _, den = text.partition("/")
    try:
        return float(num) / float(den or 1) if float(den or 1) else 0.0
    except ValueError:
        return 0.0


def _float(text: Any, default: float = 0.0) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


def _ffmpeg_input(path: str) -> str:
    """The input name to hand ffmpeg: local files get the file: protocol, so a name containing a colon
    ('clip:1.mp4', common in scraped corpora) is not mistaken for a protocol; URLs pass through."""
    return f"file:{path}" if os.path.exists(path) else str(path)


def probe(path: str, timeout: float = PROBE_TIMEOUT_S) -> MediaInfo:
    """Read duration and stream info with ffprobe; raise DecodeError for unreadable files."""
    # ffmpeg.probe() has no timeout, so the same ffprobe command is run here with one.
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", _ffmpeg_input(path)]
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"{path}: ffprobe did not finish within {timeout:.0f} s (file unreadable or hung)") from None
    except FileNotFoundError:
        raise DecodeError("ffprobe not found on PATH: install ffmpeg (e.g. apt-get install ffmpeg)") from None
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DecodeError(f"{path}: cannot read media ({reason[-1] if reason else 'ffprobe failed'})")
    data = json.loads(done.stdout.decode("utf-8", "replace") or "{}")
    fmt = data.get("format", {})
    streams = data.get("streams", [])
    # Cover art in audio files shows up as a one-frame "video" stream; it is not a video.
    videos = [
        s for s in streams
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    if not videos and not audios:
        raise DecodeError(f"{path}: no video or audio stream found (format {fmt.get('format_name', '?')})")
    duration = _float(fmt.get("duration"))
    if duration <= 0:
        duration = max((_float(s.get("duration")) for s in videos + audios), default=0.0)
    if duration <= 0:
        raise DecodeError(f"{path}: duration unknown or zero (container reports none); remux the file with ffmpeg")
    info: dict[str, Any] = dict(
        path=str(path), duration=duration, format_name=fmt.get("format_name", ""),
        has_video=bool(videos), has_audio=bool(audios),
    )
    if videos:
        v = videos[0]
        info.update(
            width=int(v.get("width") or 0), height=int(v.get("height") or 0),
            video_fps=_rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate")),
            video_codec=v.get("codec_name", ""), video_start=_float(v.get("start_time")),
            video_duration=_float(v.get("duration")) or duration,
        )
        if info["width"] <= 0 or info["height"] <= 0:
            raise DecodeError(f"{path}: video stream has no frame size (corrupt header)")
    if audios:
        a = audios[0]
        info.update(
            audio_rate=int(_float(a.get("sample_rate"))), audio_channels=int(a.get("channels") or 0),
            audio_codec=a.get("codec_name", ""), audio_start=_float(a.get("start_time")),
            audio_duration=_float(a.get("duration")) or duration,
        )
    return MediaInfo(**info)


class _FfmpegPipe:
    """An ffmpeg child whose stdout is read in sized chunks, with stderr drained and a stall watchdog."""

    def __init__(self, args: list[str], path: str, stall_timeout: float):
        self.path = path
        self.stall_timeout = stall_timeout
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: list[str] = []  # ffmpeg's error lines (first MAX_MESSAGES)
        self._stalled = False
        self._waiting_since: float | None = None
        self._done = threading.Event()
        # stderr must be drained concurrently, or a chatty corrupt file fills the pipe and deadlocks ffmpeg.
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()
        threading.Thread(target=self._watchdog, daemon=True).start()

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            if len(self.messages) < MAX_MESSAGES:
                self.messages.append(line.decode("utf-8", "replace").strip())

    def _watchdog(self) -> None:
        while not self._done.wait(0.5):
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self.stall_timeout:
                self._stalled = True
                self.proc.kill()
                return

    def read(self, nbytes: int) -> bytearray:
        """Up to ``nbytes`` bytes (a writable buffer); fewer only at the end of the stream."""
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        got = 0
        self._waiting_since = time.monotonic()
        try:
            while got < nbytes:
                n = self.proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
        finally:
            self._waiting_since = None
            view.release()
        if got < nbytes:
            del buffer[got:]
        return buffer

    def finish(self, what: str) -> list[str]:
        """Wait for ffmpeg to exit and return its error lines; raise DecodeError if it failed or stalled."""
        try:
            self.proc.wait(timeout=self.stall_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._stalled = True
        self._done.set()
        self._drainer.join(timeout=5)
        if self._stalled:
            raise DecodeError(f"{self.path}: ffmpeg {what} stalled for {self.stall_timeout:.0f} s and was killed")
        if self.proc.returncode != 0:
            raise DecodeError(
                f"{self.path}: ffmpeg {what} failed (exit {self.proc.returncode}): "
                f"{self.messages[-1] if self.messages else 'no message'}"
            )
        return self.messages

    def close(self) -> None:
        """Stop ffmpeg if still running (consumer gave up early) without leaking the process."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._done.set()
        self.proc.stdout.close()


def frame_filter_graph(fps: float, size: int, frame_rule: str) -> list[tuple[str, tuple, dict]]:
    """The ffmpeg filters that pick one frame per 1/fps interval and make it ``size`` x ``size``.

    ``fps=F:round=up`` emits, for output k at k/F, the last input frame with pts <= k/F: the frame on
    screen at the start of the interval. For the middle rule, timestamps are shifted back by half an
    interval first, so output k holds the frame on screen at (k + 0.5)/F; the last frame is cloned for
    half an interval so a final partial interval (and a clip shorter than 1/F) still yields a frame.
    Scaling keeps the display aspect ratio (shorter side -> size, bicubic like CLIP's preprocessing),
    then center-crops to a square; only the selected frames are scaled.
    """
    filters: list[tuple[str, tuple, dict]] = [("setpts", ("PTS-STARTPTS",), {})]
    if frame_rule == "middle":
        half = 0.5 / fps
        filters += [
            ("tpad", (), {"stop_mode": "clone", "stop_duration": f"{half:.9f}"}),
            ("setpts", (f"PTS-{half:.9f}/TB",), {}),
        ]
    elif frame_rule != "start":
        raise ValueError(f"frame_rule must be 'start' or 'middle', got {frame_rule!r}")
    filters += [
        ("fps", (), {"fps": f"{fps:.9g}", "round": "up"}),
        ("scale", ("iw*sar", "ih"), {}),  # anamorphic video: square pixels first, so the crop keeps the shape
        ("setsar", ("1",), {}),
        ("scale", (size, size), {"force_original_aspect_ratio": "increase", "flags": "bicubic"}),
        ("crop", (size, size), {}),
    ]
    return filters


def frame_count(video_duration: float, fps: float) -> int:
    """Frames the selection yields: one per started 1/fps interval, at least one."""
    return max(1, math.ceil(video_duration * fps - 1e-6))


def frame_timestamps(indices: np.ndarray, fps: float, frame_rule: str, duration: float) -> np.ndarray:
    """Seconds (from the video stream's first frame) that each selected frame stands for.

    "start": k/fps. "middle": (k + 0.5)/fps, capped at the duration for a final partial interval,
    whose frame is the video's last one.
    """
    ts = np.asarray(indices, dtype=np.float64) / fps
    if frame_rule == "middle":
        ts = np.minimum(ts + 0.5 / fps, duration)
    return ts.astype(np.float32)


def iter_frames(
    path: str,
    info: MediaInfo,
    fps: float,
    size: int,
    frame_rule: str = "start",
    batch: int = 32,
    stall_timeout: float = STALL_TIMEOUT_S,
    diagnostics: list[str] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frames, timestamps)``: (B, size, size, 3) uint8 RGB and (B,) float32 seconds, B <= batch.

    Frames are streamed from ffmpeg at the low rate, so at most ``batch`` frames are in memory.
    ffmpeg stops after :func:`frame_count` frames: the middle rule's padding can otherwise produce one
    more frame when the duration is a whole number of intervals. Damage ffmpeg reports, or fewer
    frames than the stream's duration promises, is appended to ``diagnostics``; both together mean a
    truncated or broken stream and raise DecodeError (after the frames decoded so far were yielded).
    """
    if not info.has_video:
        return
    stream = ffmpeg.input(_ffmpeg_input(path)).video
    for name, args, kwargs in frame_filter_graph(fps, size, frame_rule):
        stream = stream.filter(name, *args, **kwargs)
    expected = frame_count(info.video_duration, fps)
    cmd = (
        stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=expected)
        .global_args("-nostdin", "-v", "error")
        .compile()
    )
    frame_bytes = size * size * 3
    pipe = _FfmpegPipe(cmd, str(path), stall_timeout)
    emitted = 0
    try:
        while True:
            data = pipe.read(frame_bytes * batch)
            n = len(data) // frame_bytes
            if n:
                frames = np.frombuffer(data, np.uint8, count=n * frame_bytes).reshape(n, size, size, 3)
                ts = frame_timestamps(np.arange(emitted, emitted + n), fps, frame_rule, info.video_duration)
                emitted += n
                yield frames, ts
            if len(data) < frame_bytes * batch:
                break
        messages = pipe.finish("video decode")
    finally:
        pipe.close()
    if emitted == 0:
        raise DecodeError(f"{path}: the video stream decoded to no frames (corrupt or empty stream)")
    _judge_completeness(
        path, "video", f"{emitted} of {expected} frames", emitted < expected, messages, diagnostics
    )


def decode_audio(
    path: str,
    info: MediaInfo,
    sample_rate: int = 16000,
    stall_timeout: float = STALL_TIMEOUT_S,
    diagnostics: list[str] | None = None,
) -> np.ndarray:
    """The first audio stream as mono float32 at ``sample_rate`` (channels averaged), cut to the stream's
    probed duration; empty if the file has no audio. Damage and shortfall are judged as in iter_frames
    (short = more than AUDIO_SHORTFALL_S, or 1 %, missing)."""
    if not info.has_audio:
        return np.zeros(0, np.float32)
    cmd = (
        ffmpeg.input(_ffmpeg_input(path)).audio
        .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate)
        .global_args("-nostdin", "-v", "error")
        .compile()
    )
    pipe = _FfmpegPipe(cmd, str(path), stall_timeout)
    try:
        # Sized reads (1 s each) keep the watchdog meaningful and avoid one giant transient buffer.
        chunks = []
        while chunk := pipe.read(4 * sample_rate):
            chunks.append(np.frombuffer(chunk, np.float32, count=len(chunk) // 4))
        messages = pipe.finish("audio decode")
    finally:
        pipe.close()
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    got, promised = len(wave) / sample_rate, info.audio_duration
    short = got < promised - max(AUDIO_SHORTFALL_S, 0.01 * promised)
    _judge_completeness(path, "audio", f"{got:.2f} s of {promised:.2f} s", short, messages, diagnostics)
    # Encoders pad their last frame (AAC adds up to a frame of silence); samples past the probed
    # duration are not part of the media.
    return wave[: math.ceil(promised * sample_rate)]


def _judge_completeness(
    path: str, stream: str, decoded: str, short: bool, messages: list[str], diagnostics: list[str] | None
) -> None:
    """Short output plus decoder errors = truncated/broken file (DecodeError); either alone = a diagnostic.

    ffmpeg conceals many errors and exits 0, so its messages and the amount decoded are both needed:
    real corpora are full of files with harmless decoder complaints, and of streams a frame shorter
    than their header says.
    """
    if short and messages:
        raise DecodeError(f"{path}: {stream} stream truncated or damaged: decoded {decoded} ({messages[0]})")
    if diagnostics is not None:
        if short:
            diagnostics.append(f"{stream}: decoded only {decoded} the stream header promises")
        if messages:
            diagnostics.append(f"{stream}: ffmpeg reported {len(messages)} error line(s), first: {messages[0]}")
