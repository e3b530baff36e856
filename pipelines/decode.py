"""Probe and decode media with the ffmpeg binary in a subprocess.

Everything runs in a child process (built with ffmpeg-python), so a file that crashes or hangs the
decoder cannot take the calling worker down: crashes surface as a non-zero exit status, hangs are cut
by timeouts, and both become :class:`DecodeError` naming the file.

Headers are not trusted for lengths: every stream is decoded to its real end, and its measured length
(:class:`DecodeLog`) gives the token counts and the recorded duration; a header that disagrees gets a
note. Frames are selected, scaled and center-cropped inside ffmpeg's filter graph and streamed through a
pipe ``batch`` frames at a time, so memory is bounded by the batch, never by the video's length or
frame rate. Audio is decoded whole as mono float32 (an hour at 16 kHz is 230 MB); the audio tokenizer
then works on it in bounded chunks.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import ffmpeg
import numpy as np

PROBE_TIMEOUT_S = 30.0
# A decode is cut when ffmpeg produces no output for this long (a hung decoder); slow-but-moving is fine.
STALL_TIMEOUT_S = 60.0
MAX_MESSAGES = 20  # ffmpeg error lines kept from the start and from the end (a damaged file can print thousands)
# A header duration is believed when the decoded streams end within this much of it (whichever is larger):
# encoders pad a last audio frame (AAC 1024 samples = 0.128 s at 8 kHz) and containers round.
DURATION_TOLERANCE_S = 0.2
DURATION_TOLERANCE_FRACTION = 0.01
# ffmpeg's stderr lines that never explain a failure: repeat counters, progress lines, and the CLI's
# wrap-up after the real error ("Error marking filters as finished", "Conversion failed!").
_NOISE = re.compile(
    r"Last message repeated \d+ times?|^(frame|size)=\s*\S+.*time=|Error marking filters as finished"
    r"|^Conversion failed!?$|^Error (while filtering|closing file|writing trailer)"
)
# Words of a line that names what is wrong with the input, most telling first.
_CAUSE_WORDS = (
    ("invalid", "no such", "could not", "not found", "corrupt", "truncat", "partial file", "permission denied",
     "unsupported", "end of file", "does not contain", "unknown"),
    ("error", "failed", "cannot", "can't"),
)


class DecodeError(Exception):
    """A media file could not be probed or decoded; the message names the file and the reason."""


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


def ffmpeg_reason(lines: Sequence[str]) -> str:
    """The stderr line that explains a failure: the last one naming an error ("Invalid data found when
    processing input", "No such file or directory", "could not find codec parameters"), else the last
    line that is not noise; never a repeat counter ("Last message repeated 2 times") or a progress line."""
    useful = [line.strip() for line in lines if line.strip() and not _NOISE.search(line)]
    for words in _CAUSE_WORDS:
        for line in reversed(useful):
            if any(word in line.lower() for word in words):
                return line
    return useful[-1] if useful else "no message"


def duration_tolerance(seconds: float) -> float:
    """How far a header's duration may be from the decoded one and still count as the same."""
    return max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * seconds)


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




class _FfmpegPipe:
    """An ffmpeg child whose stdout is read in sized chunks, with stderr drained and a stall watchdog."""

    def __init__(self, args: list[str], path: str, stall_timeout: float, pass_fds: Sequence[int] = ()):
        self.path = path
        self.stall_timeout = stall_timeout
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(pass_fds)
        )
        # ffmpeg's error lines: the first and the last MAX_MESSAGES (a fatal error usually comes last).
        self._head: list[str] = []
        self._tail: deque[str] = deque(maxlen=MAX_MESSAGES)
        self.message_count = 0
        self._stalled = False
        self._waiting_since: float | None = None
        self._done = threading.Event()
        # stderr must be drained concurrently, or a chatty corrupt file fills the pipe and deadlocks ffmpeg.
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()
        threading.Thread(target=self._watchdog, daemon=True).start()

    @property
    def messages(self) -> list[str]:
        return self._head + list(self._tail)

    def _drain_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if not line or _NOISE.search(line):
                continue
            self.message_count += 1
            (self._head.append if len(self._head) < MAX_MESSAGES else self._tail.append)(line)

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
                f"{self.path}: ffmpeg {what} failed (exit {self.proc.returncode}): {ffmpeg_reason(self.messages)}"
            )
        return self.messages

    def close(self) -> None:
        """Stop ffmpeg if still running (consumer gave up early) without leaking the process."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._done.set()
        self.proc.stdout.close()


class _PacketClock:
    """The real length of a video stream, from its packets' timestamps.

    ffmpeg copies the stream's packets (no decoding) into its ``framecrc`` muxer, written to a pipe that
    a thread reads, in the same run that decodes the frames: one read of the file gives both. The
    length is from the first packet's time to the end of the last one, whatever the header claims.
    """

    _NOPTS = -(2**63)

    def __init__(self, frame_seconds: float):
        self.read_fd, self.write_fd = os.pipe()
        self._frame_seconds = frame_seconds  # for packets without a duration (some containers leave it 0)
        self._time_base = 0.0
        self._first: int | None = None
        self._end = self._NOPTS  # max(time + duration) over packets with a duration
        self._last_start = self._NOPTS  # max(time) over packets without one
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        """Call once ffmpeg runs: the child holds the write end now, and its exit ends the listing."""
        os.close(self.write_fd)
        self._thread.start()

    def _read(self) -> None:
        # Every line is read, parsable or not: ffmpeg blocks if the pipe is not drained.
        with open(self.read_fd, "rb") as listing:
            for raw in listing:
                try:
                    self._parse(raw.decode("ascii", "replace"))
                except (ValueError, IndexError, ZeroDivisionError):
                    continue

    def _parse(self, line: str) -> None:
        if line.startswith("#tb 0:"):
            num, _, den = line.split(":", 1)[1].strip().partition("/")
            self._time_base = int(num) / int(den)
        elif line[:1].isdigit():  # stream index, dts, pts, duration, size, checksum[, flags]
            fields = line.split(",")
            dts, pts, duration = int(fields[1]), int(fields[2]), int(fields[3])
            at = pts if pts != self._NOPTS else dts  # raw elementary streams carry only dts
            if at == self._NOPTS:
                return
            self._first = at if self._first is None else min(self._first, at)
            if duration > 0:
                self._end = max(self._end, at + duration)
            else:
                self._last_start = max(self._last_start, at)

    def seconds(self) -> float | None:
        """The stream's length once ffmpeg has exited; None when no packet had a timestamp."""
        self._thread.join(timeout=10)
        if self._first is None or not self._time_base:
            return None
        end = self._end * self._time_base
        if self._last_start != self._NOPTS:
            end = max(end, self._last_start * self._time_base + self._frame_seconds)
        return end - self._first * self._time_base

    def close(self) -> None:
        """Release the pipe when ffmpeg never started."""
        if self._thread.ident is None:
            for fd in (self.read_fd, self.write_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass


def padding_seconds(fps: float, source_fps: float) -> float:
    """How long the last frame is repeated past the end so that every interval the rule counts has a frame.

    The repeats are whole source frames (ffmpeg's tpad rounds the duration to them), so the padding must
    beat half an interval (the middle rule's shift) by more than half a source frame: one interval plus
    one source frame does, at any rates.
    """
    return 1.0 / fps + 1.0 / (source_fps if source_fps > 0 else 1.0)


def frame_filter_graph(fps: float, size: int, frame_rule: str, source_fps: float) -> list[tuple[str, tuple, dict]]:
    """The ffmpeg filters that pick one frame per 1/fps interval and make it ``size`` x ``size``.

    ``fps=F:round=up`` emits, for output k at k/F, the last input frame with pts <= k/F: the frame on
    screen at the start of the interval. For the middle rule, timestamps are shifted back by half an
    interval first, so output k holds the frame on screen at (k + 0.5)/F. The last frame is repeated
    past the end (:func:`padding_seconds`), so a final partial interval (and a clip shorter than 1/F)
    still yields a frame; the frames past the rule's count are dropped by :func:`iter_frames`.
    Scaling keeps the display aspect ratio (shorter side -> size, bicubic like CLIP's preprocessing),
    then center-crops to a square; only the selected frames are scaled.
    """
    if frame_rule not in ("start", "middle"):
        raise ValueError(f"frame_rule must be 'start' or 'middle', got {frame_rule!r}")
    filters: list[tuple[str, tuple, dict]] = [
        ("setpts", ("PTS-STARTPTS",), {}),
        ("tpad", (), {"stop_mode": "clone", "stop_duration": f"{padding_seconds(fps, source_fps):.9f}"}),
    ]
    if frame_rule == "middle":
        filters.append(("setpts", (f"PTS-{0.5 / fps:.9f}/TB",), {}))
    filters += [
        ("fps", (), {"fps": f"{fps:.9g}", "round": "up"}),
        ("scale", ("iw*sar", "ih"), {}),  # anamorphic video: square pixels first, so the crop keeps the shape
        ("setsar", ("1",), {}),
        ("scale", (size, size), {"force_original_aspect_ratio": "increase", "flags": "bicubic"}),
        ("crop", (size, size), {}),
    ]
    return filters


def frame_count(video_seconds: float, fps: float) -> int:
    """Frames the rules give a video of this length: one per started 1/fps interval, at least one
    (ceil(seconds * fps): a 4.004 s video at 2 fps has 9)."""
    return max(1, math.ceil(video_seconds * fps - 1e-6))


def frame_timestamps(indices: np.ndarray, fps: float, frame_rule: str, duration: float) -> np.ndarray:
    """Seconds (from the video stream's first frame) that each selected frame stands for.

    "start": k/fps. "middle": (k + 0.5)/fps, capped at the duration for a final partial interval,
    whose frame is the video's last one.
    """
    ts = np.asarray(indices, dtype=np.float64) / fps
    if frame_rule == "middle":
        ts = np.minimum(ts + 0.5 / fps, duration)
    return ts.astype(np.float32)


@dataclass
class _FramesEnd:
    """What a finished frame decode learned besides its frames: ffmpeg's error lines and the stream's length."""

    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _filtered_frames(
    path: str, info: MediaInfo, filters: Sequence[tuple[str, tuple, dict]], size: int, batch: int,
    stall_timeout: float, end: _FramesEnd,
) -> Iterator[np.ndarray]:
    """Yield (B, size, size, 3) uint8 RGB batches, B <= batch, of the first video stream through ``filters``.

    One ffmpeg run filters the frames and, from the same read of the file, lists the stream's packets
    (:class:`_PacketClock`); once the frames are exhausted, ``end`` holds ffmpeg's error lines and the
    stream's length. ffmpeg failing or stalling is a DecodeError.
    """
    source = ffmpeg.input(_ffmpeg_input(path))
    stream = source["v:0"]
    for name, args, kwargs in filters:
        stream = stream.filter(name, *args, **kwargs)
    clock = _PacketClock(1.0 / info.video_fps if info.video_fps > 0 else 0.0)
    cmd = (
        ffmpeg.merge_outputs(
            stream.output("pipe:", format="rawvideo", pix_fmt="rgb24"),
            # Every packet: a stream copy skips those before the first keyframe (.swf marks none).
            source["v:0"].output(f"pipe:{clock.write_fd}", format="framecrc", c="copy", copyinkf=None),
        )
        .global_args("-nostdin", "-v", "error")
        .compile()
    )
    frame_bytes = size * size * 3
    try:
        pipe = _FfmpegPipe(cmd, str(path), stall_timeout, pass_fds=(clock.write_fd,))
    except BaseException:
        clock.close()
        raise
    clock.start()
    try:
        while True:
            data = pipe.read(frame_bytes * batch)
            n = len(data) // frame_bytes
            if n:
                yield np.frombuffer(data, np.uint8, count=n * frame_bytes).reshape(n, size, size, 3)
            if len(data) < frame_bytes * batch:
                break
        end.messages = pipe.finish("video decode")
        seconds = clock.seconds()
    finally:
        pipe.close()
        clock.close()
    if seconds is None:
        raise DecodeError(f"{path}: the video stream has no packet timestamps; remux the file with ffmpeg")
    end.seconds = seconds


def iter_frames(
    path: str,
    info: MediaInfo,
    fps: float,
    size: int,
    frame_rule: str = "start",
    batch: int = 32,
    stall_timeout: float = STALL_TIMEOUT_S,
    log: DecodeLog | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frames, timestamps)``: (B, size, size, 3) uint8 RGB and (B,) float32 seconds, B <= batch.

    The stream is decoded to its real end, whatever its header says; its length, measured from its
    packets in the same ffmpeg run, is stored in ``log.video_seconds`` and gives the number of frames
    (:func:`frame_count`). Frames are streamed at the low rate; the last few are held back until the
    length is known, since the padding of the filter graph can add frames past the rule's count.
    Damage ffmpeg reports is noted in ``log``; damage plus a stream shorter than its header means a
    truncated or broken file and raises DecodeError (after the frames decoded so far were yielded).
    """
    if not info.has_video:
        return
    log = log if log is not None else DecodeLog()
    held_back = math.ceil(padding_seconds(fps, info.video_fps) * fps) + 2
    filters = frame_filter_graph(fps, size, frame_rule, info.video_fps)
    end = _FramesEnd()
    pending = np.zeros((0, size, size, 3), np.uint8)
    emitted = 0
    for frames in _filtered_frames(path, info, filters, size, batch, stall_timeout, end):
        pending = np.concatenate([pending, frames]) if len(pending) else frames
        ready = len(pending) - held_back
        if ready > 0:
            # Frames before the held-back ones are never the last: no timestamp cap applies to them.
            yield pending[:ready], frame_timestamps(np.arange(emitted, emitted + ready), fps, frame_rule, math.inf)
            emitted += ready
            pending = pending[ready:]
    seconds = log.video_seconds = end.seconds
    wanted = frame_count(seconds, fps)
    tail = pending[: max(0, wanted - emitted)]  # the rest is padding past the rule's count
    for first in range(0, len(tail), batch):
        chunk = tail[first : first + batch]
        yield chunk, frame_timestamps(np.arange(emitted, emitted + len(chunk)), fps, frame_rule, seconds)
        emitted += len(chunk)
    if emitted == 0:
        raise DecodeError(f"{path}: the video stream decoded to no frames (corrupt or empty stream)")
    if emitted != wanted and not end.messages:  # decoded frames and packets disagree, silently
        log.notes.append(f"video: {emitted} frames decoded where the stream's packets ({seconds:.3f} s) give {wanted}")
    header = info.video_duration
    _judge_completeness(path, "video", f"{seconds:.2f} s of the {header:.2f} s its header claims",
                        seconds < header - duration_tolerance(header) or emitted < wanted, end.messages, log)


def iter_filtered_frames(
    path: str,
    info: MediaInfo,
    filters: Sequence[tuple[str, tuple, dict]],
    size: int,
    fps: float,
    batch: int = 32,
    stall_timeout: float = STALL_TIMEOUT_S,
    log: DecodeLog | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frames, timestamps)`` like :func:`iter_frames`, but of another extractor's filter chain:
    every frame ``filters`` emit (they must end in ``size`` x ``size`` frames at ``fps`` frames per
    second), frame k stamped k/fps from the stream's first frame. No frame rule of lamflow's is applied:
    this is how a preset reproduces the frames of the extractor it is named after. Length, notes and
    damage are measured and judged as in :func:`iter_frames`.
    """
    if not info.has_video:
        return
    log = log if log is not None else DecodeLog()
    end = _FramesEnd()
    emitted = 0
    for frames in _filtered_frames(path, info, filters, size, batch, stall_timeout, end):
        yield frames, (np.arange(emitted, emitted + len(frames), dtype=np.float64) / fps).astype(np.float32)
        emitted += len(frames)
    seconds = log.video_seconds = end.seconds
    if emitted == 0:
        raise DecodeError(f"{path}: the video stream decoded to no frames (corrupt or empty stream)")
    header = info.video_duration
    _judge_completeness(path, "video", f"{seconds:.2f} s of the {header:.2f} s its header claims",
                        seconds < header - duration_tolerance(header), end.messages, log)


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
    are judged as in :func:`iter_frames`.
    """
    if not info.has_audio:
        return np.zeros(0, np.float32)
    log = log if log is not None else DecodeLog()
    cmd = (
        ffmpeg.input(_ffmpeg_input(path))["a:0"]
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
    header = info.audio_duration
    if 0 < header and len(wave) / sample_rate <= header + duration_tolerance(header):
        wave = wave[: math.ceil(header * sample_rate)]
    seconds = log.audio_seconds = len(wave) / sample_rate
    _judge_completeness(path, "audio", f"{seconds:.2f} s of the {header:.2f} s its header claims",
                        seconds < header - duration_tolerance(header), messages, log)
    return wave


def _judge_completeness(
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
