"""Short real media for tests, generated with ffmpeg's lavfi sources (nothing is committed)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def make_media(
    path: Path,
    duration: float = 3.0,
    video: bool = True,
    audio: bool = True,
    size: str = "160x120",
    rate: int = 25,
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
