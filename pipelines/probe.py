"""What a media file's header claims (:func:`probe`, with ffprobe) and how the decoded streams are judged
against it.

Headers are not trusted for lengths: every stream is decoded to its real end, and its measured length
(:class:`DecodeLog`) gives the token counts and the recorded duration; a header that disagrees gets a
note (:func:`duration_note`), and decoder errors with a short stream are a damaged file
(:func:`judge_completeness`).
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

from lamflow.pipelines.ffmpeg_process import PROBE_TIMEOUT_S, DecodeError, ffmpeg_input, ffmpeg_reason

# A header duration is believed when the decoded streams end within this much of it (whichever is larger):
# encoders pad a last audio frame (AAC 1024 samples = 0.128 s at 8 kHz) and containers round.
DURATION_TOLERANCE_S = 0.2
DURATION_TOLERANCE_FRACTION = 0.01


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe says about a file: the parts extraction needs, JSON-friendly for meta.json."""

    path: str
    # Durations are what the header claims (0.0: it claims none); DecodeLog has what the streams hold.
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
    video_header_frames: int = 0  # the frame count the stream's header states (nb_frames); 0 when it states none
    audio_rate: int = 0
    audio_channels: int = 0
    audio_codec: str = ""
    audio_start: float = 0.0
    audio_duration: float = 0.0  # the audio stream's own duration (the container's when it has none)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DecodeLog:
    """What decoding learned that the header did not say: each stream's decoded length, and notes.

    Headers can be wrong (a raw .m1v stream's duration is guessed from its bitrate; an edited mp4 can
    claim 400 s for 4 s of streams), so token counts and the recorded duration come from here.
    """

    notes: list[str] = field(default_factory=list)  # for meta.json: damage ffmpeg reported, lying headers
    video_seconds: float | None = None  # first frame to the end of the last, from the stream's packets
    audio_seconds: float | None = None  # decoded samples / rate, encoder padding removed


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


def duration_tolerance(seconds: float) -> float:
    """How far a header's duration may be from the decoded one and still count as the same."""
    return max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * seconds)


def probe(path: str, timeout: float = PROBE_TIMEOUT_S) -> MediaInfo:
    """Read duration and stream info with ffprobe; raise DecodeError for unreadable files."""
    # ffmpeg.probe() has no timeout, so the same ffprobe command is run here with one.
    args = ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", ffmpeg_input(path)]
    try:
        done = subprocess.run(args, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"{path}: ffprobe did not finish within {timeout:.0f} s (file unreadable or hung)") from None
    except FileNotFoundError:
        raise DecodeError("ffprobe not found on PATH: install ffmpeg (e.g. apt-get install ffmpeg)") from None
    if done.returncode != 0:
        reason = ffmpeg_reason(done.stderr.decode("utf-8", "replace").splitlines())
        raise DecodeError(f"{path}: cannot read media ({reason})")
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
        # 0 when the header has none at all (e.g. .swf): decoding measures it (see DecodeLog).
        duration = max((_float(s.get("duration")) for s in videos + audios), default=0.0)
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
            video_header_frames=int(_float(v.get("nb_frames"))),
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


def judge_completeness(
    path: str, stream: str, decoded: str, short: bool, messages: list[str], log: DecodeLog
) -> None:
    """Short output plus decoder errors = truncated/broken file (DecodeError); errors alone = a note.

    ffmpeg conceals many errors and exits 0, so its messages and the amount decoded are both needed:
    real corpora are full of files with harmless decoder complaints, and of headers that claim more
    than the streams hold (:func:`duration_note` reports those).
    """
    if short and messages:
        raise DecodeError(
            f"{path}: {stream} stream truncated or damaged: decoded {decoded} ({ffmpeg_reason(messages)})"
        )
    if messages:
        log.notes.append(f"{stream}: ffmpeg reported {len(messages)} error line(s), e.g. {ffmpeg_reason(messages)}")


def decoded_duration(info: MediaInfo, log: DecodeLog) -> float:
    """The media's duration on the container timeline, from the decoded streams (the header's when none was)."""
    spans = [(start, seconds) for start, seconds in ((info.video_start, log.video_seconds),
                                                     (info.audio_start, log.audio_seconds)) if seconds is not None]
    if not spans:
        return info.duration
    return max(start + seconds for start, seconds in spans) - min(start for start, _ in spans)


def duration_note(info: MediaInfo, log: DecodeLog) -> str | None:
    """A note for meta.json when the header's durations disagree with the decoded streams, else None."""
    measured = decoded_duration(info, log)

    def differs(claimed: float, decoded: float) -> bool:
        return abs(claimed - decoded) > duration_tolerance(decoded)

    claims = []
    container_wrong = differs(info.duration, measured)
    if container_wrong:
        claims.append(f"the container {info.duration:.3f} s" if info.duration > 0 else "no duration")
    for stream, claimed, decoded in (("video", info.video_duration, log.video_seconds),
                                     ("audio", info.audio_duration, log.audio_seconds)):
        # A stream without its own duration inherits the container's: one claim, said once.
        if decoded is not None and differs(claimed, decoded) and not (container_wrong and claimed == info.duration):
            claims.append(f"the {stream} stream {claimed:.3f} s")
    if not claims:
        return None
    streams = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in
                        (("video", log.video_seconds), ("audio", log.audio_seconds)) if seconds is not None)
    return (f"duration: the header claims {' and '.join(claims)}, the decoded streams last {measured:.3f} s "
            f"({streams}); duration, token counts and timestamps follow the decoded streams")
