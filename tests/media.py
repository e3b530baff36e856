"""Short real media for tests, generated with ffmpeg's lavfi sources and Pillow (nothing is committed)."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Image classes that even random-weight CLIP patch tokens tell apart: two solid colour families and stripes.
IMAGE_PATTERNS = ("red", "blue", "stripes")
_IMAGE_FORMATS = (".jpg", ".png", ".webp")


def make_media(
    path: Path,
    duration: float = 3.0,
    video: bool = True,
    audio: bool = True,
    size: str = "160x120",
    rate: int | str = 25,
    tone_hz: float = 440.0,
    sample_rate: int = 16000,
) -> Path:
    """Write ``path`` with a testsrc2 picture and/or a sine tone; returns ``path``.

    The container follows the suffix (.mp4, .mkv, .wav ...). At least one of video/audio must be on.
    """
    if not (video or audio):
        raise ValueError("make_media needs video or audio")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-v", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate={sample_rate}:duration={duration}"]
    if video:
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac" if path.suffix in {".mp4", ".mkv", ".mov"} else "pcm_s16le"]
    cmd.append(str(path))
    subprocess.run(cmd, check=True)
    return path


def _mp4_boxes(data: bytes | bytearray, start: int, end: int):
    """(type, body offset, end offset) of the ISO-BMFF boxes in data[start:end]."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack(">I4s", data[at : at + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[at + 8 : at + 16])[0], 16
        elif size == 0:
            size = end - at
        yield kind, at + header, at + size
        at += size


def rewrite_mp4_durations(path: Path, seconds: float, media_too: bool = False) -> Path:
    """Make an mp4's header lie: set the movie (mvhd) and track (tkhd) durations to ``seconds``, and with
    ``media_too`` each track's own media duration (mdhd) as well; the samples stay as they were.

    This is what a badly edited or badly muxed file looks like: ffprobe then reports ``seconds``
    while the streams hold what was encoded. Only version-0 boxes (what ffmpeg writes) are handled.
    """
    data = bytearray(Path(path).read_bytes())

    def set_duration(body: int, timescale_at: int, duration_at: int, timescale: int | None = None) -> int:
        if data[body] != 0:
            raise ValueError(f"{path}: only version-0 mvhd/tkhd/mdhd boxes are handled")
        timescale = timescale or struct.unpack(">I", data[body + timescale_at : body + timescale_at + 4])[0]
        struct.pack_into(">I", data, body + duration_at, round(seconds * timescale))
        return timescale

    for kind, body, end in _mp4_boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        movie_scale = None
        for kind2, body2, end2 in _mp4_boxes(data, body, end):
            if kind2 == b"mvhd":  # version/flags, creation, modification, timescale, duration
                movie_scale = set_duration(body2, 12, 16)
            elif kind2 == b"trak":
                for kind3, body3, end3 in _mp4_boxes(data, body2, end2):
                    if kind3 == b"tkhd":  # ... track id, reserved, duration (movie timescale)
                        set_duration(body3, 0, 20, movie_scale)
                    elif kind3 == b"mdia" and media_too:
                        for kind4, body4, _ in _mp4_boxes(data, body3, end3):
                            if kind4 == b"mdhd":
                                set_duration(body4, 12, 16)
    Path(path).write_bytes(bytes(data))
    return Path(path)


def make_image(path: Path, pattern: str, rng: np.random.Generator) -> Path:
    """Write one image of ``pattern`` (see IMAGE_PATTERNS) at ``path`` (format from the suffix), with a random
    size (not square: the CLIP preprocessing resizes and crops) and a random shade or stripe period."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (int(rng.integers(72, 128)), int(rng.integers(72, 128)))
    if pattern == "red":
        image = Image.new("RGB", size, (int(rng.integers(180, 256)), int(rng.integers(0, 80)), int(rng.integers(0, 80))))
    elif pattern == "blue":
        image = Image.new("RGB", size, (int(rng.integers(0, 80)), int(rng.integers(0, 120)), int(rng.integers(180, 256))))
    elif pattern == "stripes":
        image = Image.new("RGB", size, (255, 255, 255))
        period = int(rng.integers(6, 14))
        draw = ImageDraw.Draw(image)
        for x in range(-int(rng.integers(0, period)), size[0], period):
            draw.rectangle([x, 0, x + period // 2 - 1, size[1]], fill=(0, 0, 0))
    else:
        raise ValueError(f"pattern must be one of {IMAGE_PATTERNS}, got {pattern!r}")
    image.save(path)
    return path


def make_image_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """An ImageNet-style folder ROOT/CLASS/CLASS_NN.EXT: ``per_class`` images of each IMAGE_PATTERNS class,
    in JPEG, PNG and WebP by turns."""
    rng = np.random.default_rng(seed)
    for pattern in IMAGE_PATTERNS:
        for index in range(per_class):
            make_image(root / pattern / f"{pattern}_{index:02d}{_IMAGE_FORMATS[index % len(_IMAGE_FORMATS)]}", pattern, rng)
    return root
