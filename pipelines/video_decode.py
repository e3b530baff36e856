"""The frames of a video stream, selected and scaled by ffmpeg, streamed in bounded batches.

Frames are selected, scaled and center-cropped inside ffmpeg's filter graph (:func:`frame_filter_graph`,
one frame per started 1/fps interval) and streamed through a pipe ``batch`` frames at a time, so memory is
bounded by the batch, never by the video's length or frame rate. The stream's real length is measured
from its packets in the same ffmpeg run (:class:`_PacketClock`), whatever its header claims.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import ffmpeg
import numpy as np

from lamflow.pipelines.ffmpeg_process import STALL_TIMEOUT_S, DecodeError, FfmpegPipe, ffmpeg_input
from lamflow.pipelines.probe import DecodeLog, MediaInfo, duration_tolerance, judge_completeness


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
    source = ffmpeg.input(ffmpeg_input(path))
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
        pipe = FfmpegPipe(cmd, str(path), stall_timeout, pass_fds=(clock.write_fd,))
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
    judge_completeness(path, "video", f"{seconds:.2f} s of the {header:.2f} s its header claims",
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
    judge_completeness(path, "video", f"{seconds:.2f} s of the {header:.2f} s its header claims",
                        seconds < header - duration_tolerance(header), end.messages, log)
