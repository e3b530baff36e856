"""Rendering the demo corpus: each video is ONE ffmpeg call from lavfi sources.

``color`` + ``drawbox`` filters gated by ``enable`` expressions draw the picture; pink ``anoisesrc`` (so
silence is not trivially empty) mixed with an ``aevalsrc`` beep expression makes the sound.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from lamflow.demo.schedule import (
    BEEP_AMPLITUDE,
    BEEP_RAMP_SECONDS,
    COLOURS,
    NOISE_AMPLITUDE,
    TONES,
    CorpusConfig,
    VideoPlan,
)
from lamflow.fileio import commit_temp, temp_path


def ffmpeg_command(config: CorpusConfig, plan: VideoPlan, output: Path) -> list[str]:
    """The single ffmpeg call that renders ``plan`` to ``output`` (mp4: H.264 + mono AAC)."""
    rgb = "0x{:02x}{:02x}{:02x}"
    picture = [f"color=c={rgb.format(*plan.background)}:s={config.width}x{config.height}:r={config.fps}"
               f":d={plan.duration}", "format=yuv420p"]
    for s in plan.segments:
        if s.shape:
            x, y, w, h = s.shape.box
            fill = s.shape.thickness or "fill"
            # gte/lt (half-open) so back-to-back segments never share a frame.
            picture.append(f"drawbox=x={x}:y={y}:w={w}:h={h}:color={rgb.format(*COLOURS[s.shape.colour])}"
                           f":t={fill}:enable='gte(t,{s.start})*lt(t,{s.end})'")
    beeps = sorted((start, end, TONES[s.tone]) for s in plan.segments if s.tone for start, end in s.beeps)
    graph = ";".join([
        ",".join(picture) + "[v]",
        f"anoisesrc=color=pink:amplitude={NOISE_AMPLITUDE}:seed={plan.noise_seed}:r={config.sample_rate}"
        f":d={plan.duration}[noise]",
        f"aevalsrc='{_beep_expression(beeps)}':s={config.sample_rate}:d={plan.duration}[beeps]",
        "[noise][beeps]amix=inputs=2:normalize=0:duration=first[a]",
    ])
    return [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-filter_complex", graph, "-map", "[v]", "-map", "[a]",
        # One thread per process: the corpus is rendered by several ffmpeg processes side by side.
        "-threads", "1", "-filter_threads", "1",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "48k", "-ac", "1", "-ar", str(config.sample_rate),
        "-t", str(plan.duration), "-map_metadata", "-1", "-fflags", "+bitexact", "-f", "mp4", str(output),
    ]


def _beep_expression(beeps: list[tuple[float, float, float]]) -> str:
    """An aevalsrc expression for time-sorted, non-overlapping beeps.

    A balanced tree of ``if(lt(t, split), left, right)`` -- ffmpeg's ``if`` evaluates only the branch it
    takes -- so each sample costs O(log beeps) instead of one term per beep (10x faster at 35 beeps).
    """
    if not beeps:
        return "0"
    if len(beeps) == 1:
        start, end, hz = beeps[0]
        ramp = 1 / BEEP_RAMP_SECONDS
        return f"{BEEP_AMPLITUDE}*sin(2*PI*{hz}*t)*clip(min(t-{start},{end}-t)*{ramp:g},0,1)"
    middle = len(beeps) // 2
    return f"if(lt(t,{beeps[middle][0]}),{_beep_expression(beeps[:middle])},{_beep_expression(beeps[middle:])})"


def render_video(config: CorpusConfig, plan: VideoPlan, target: Path) -> None:
    # Write under a temporary name and rename: a file at the final name is always complete.
    partial = temp_path(target)
    result = subprocess.run(ffmpeg_command(config, plan, partial), capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg failed to render {target} (exit {result.returncode}): {result.stderr[-2000:]}")
    commit_temp(target)
