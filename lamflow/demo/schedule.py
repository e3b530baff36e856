"""The demo corpus's schedule: which shapes are shown and which beeps play when, per video, and its queries.

Every video is a grey background on which coloured shapes appear for a few seconds, while trains of
short beeps (0.15-0.3 s, shorter than one 1-fps video-token interval) play at one of three pitches.
A query names a shape *and* a pitch ("the red square while the high tone beeps"); its moment is the
segment where both co-occur. Each video is built around a 2 x 2 crossing of two shapes A, B with two
pitches X, Y -- segments (A, X), (A, Y), (B, X), (B, Y) -- so for every query one segment matches only
its shape and another only its pitch. A model that looks at frames alone, or listens alone, cannot
tell the moment from its distractors; the beeps are too short to survive pooling at video-token rate.
Fillers add one-sided events between them: a shape with no beeps, or beeps with no shape.

Segments start and end on the 2-second clip grid of QVHighlights, so ``relevant_clip_ids`` and
``saliency_scores`` are exact. Everything is drawn from ``random.Random`` seeded per video with a
string (stable across Python versions and processes), so one seed gives byte-identical annotations,
and adding videos to a split leaves the existing ones unchanged. Pure functions of the config: no ffmpeg.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from lamflow.datasets.qvhighlights_format import CLIP_SECONDS

QUERY_TEMPLATE = "the {colour} {shape} while the {tone} tone beeps"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 60),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 40),
}
# Shape geometry as fractions of the frame; thickness None = filled, else a hollow outline.
SHAPES: dict[str, dict[str, float | None]] = {
    "square": {"width": 0.225, "height": 0.3, "thickness": None},
    "bar": {"width": 0.5, "height": 0.15, "thickness": None},
    "frame": {"width": 0.3, "height": 0.4, "thickness": 0.04},
}
TONES: dict[str, float] = {"low": 400.0, "middle": 1000.0, "high": 2500.0}

BEEP_SECONDS = (0.15, 0.3)  # shorter than the 1 s between video tokens, longer than one 0.1 s audio hop
BEEP_PAUSE_SECONDS = (0.35, 0.9)
BEEP_AMPLITUDE = 0.5
BEEP_RAMP_SECONDS = 0.005  # fade in/out so beep edges do not click across every frequency
NOISE_AMPLITUDE = 0.03
BACKGROUND_GREY = (70, 120)
MIN_CLIPS_PER_CELL = 2
MAX_FILLERS = 2


@dataclass(frozen=True)
class CorpusConfig:
    """Sizes of the generated corpus. Durations are whole, even seconds (the 2-s clip grid)."""

    train_videos: int = 48
    val_videos: int = 16
    duration: int = 30  # mean video length in seconds
    duration_jitter: int = 4  # each video lasts duration +- up to this many seconds (even steps)
    queries_per_video: int = 4  # 1-4 of the 2 x 2 crossed segments become queries
    seed: int = 0
    width: int = 320
    height: int = 240
    fps: int = 25
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        checks = [
            ("train_videos", self.train_videos >= 1, "must be at least 1"),
            ("val_videos", self.val_videos >= 1, "must be at least 1"),
            ("duration", self.duration % 2 == 0, "must be an even number of seconds (2-s clip grid)"),
            ("duration_jitter", self.duration_jitter >= 0 and self.duration_jitter % 2 == 0,
             "must be an even number of seconds >= 0"),
            ("duration", self.duration - self.duration_jitter >= 4 * MIN_CLIPS_PER_CELL * CLIP_SECONDS,
             f"minus duration_jitter must leave at least {4 * MIN_CLIPS_PER_CELL * CLIP_SECONDS} s "
             "for the four crossed segments"),
            ("duration", self.duration + self.duration_jitter <= 150,
             "plus duration_jitter must stay within 150 s (QVHighlights' longest videos)"),
            ("queries_per_video", 1 <= self.queries_per_video <= 4, "must be between 1 and 4"),
            ("width", self.width >= 64 and self.width % 2 == 0, "must be even and at least 64 pixels"),
            ("height", self.height >= 48 and self.height % 2 == 0, "must be even and at least 48 pixels"),
            ("fps", 1 <= self.fps <= 60, "must be between 1 and 60"),
            ("sample_rate", self.sample_rate >= 2.5 * max(TONES.values()),
             f"must be at least {int(2.5 * max(TONES.values()))} Hz to carry the high tone"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"CorpusConfig.{name}={getattr(self, name)!r} {rule}")

    @classmethod
    def quick(cls, seed: int = 0) -> "CorpusConfig":
        """A tiny corpus for tests and smoke runs: seconds to generate."""
        return cls(train_videos=4, val_videos=2, duration=20, duration_jitter=2, seed=seed)


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x, y, width, height in pixels
    thickness: int | None  # None = filled

    @property
    def visual(self) -> tuple[str, str]:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    shape: Shape | None
    tone: str | None
    beeps: tuple[tuple[float, float], ...] = ()

    @property
    def visual(self) -> tuple[str, str] | None:
        return self.shape.visual if self.shape else None


@dataclass(frozen=True)
class Query:
    qid: int
    text: str
    segment: int  # index of the segment where shape and tone co-occur
    visual_only_distractors: tuple[int, ...]
    audio_only_distractors: tuple[int, ...]
    saliency_scores: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class VideoPlan:
    vid: str
    split: str
    duration: int
    background: tuple[int, int, int]
    noise_seed: int
    segments: tuple[Segment, ...]
    queries: tuple[Query, ...]


def plan_corpus(config: CorpusConfig) -> list[VideoPlan]:
    """Every video's schedule and queries, train first, qids numbered from 0 across both splits."""
    plans: list[VideoPlan] = []
    next_qid = 0
    for split, count in (("train", config.train_videos), ("val", config.val_videos)):
        for index in range(count):
            plan = _plan_video(config, split, index, first_qid=next_qid)
            next_qid += len(plan.queries)
            plans.append(plan)
    return plans


def _plan_video(config: CorpusConfig, split: str, index: int, first_qid: int) -> VideoPlan:
    # A string seed per video: adding videos or changing qids elsewhere never changes this one.
    rng = random.Random(f"lamflow-demo/{config.seed}/{split}/{index}")
    jitter_steps = config.duration_jitter // CLIP_SECONDS
    duration = config.duration + CLIP_SECONDS * rng.randint(-jitter_steps, jitter_steps)
    visual_a, visual_b = rng.sample([(c, s) for c in COLOURS for s in SHAPES], 2)
    tone_x, tone_y = rng.sample(list(TONES), 2)
    cells = [(v, t) for v in (visual_a, visual_b) for t in (tone_x, tone_y)]

    total_clips = duration // CLIP_SECONDS
    slack = total_clips - MIN_CLIPS_PER_CELL * len(cells)
    lengths = []
    for _ in cells:
        extra = min(rng.choice([0, 1, 2]), max(slack - 2, 0))
        lengths.append(MIN_CLIPS_PER_CELL + extra)
        slack -= extra
    # Fillers add one-sided events: a shape with no beeps, or beeps with no shape.
    fillers: list[tuple[tuple[str, str] | None, str | None, int]] = []
    while len(fillers) < MAX_FILLERS and slack >= 3 and rng.random() < 0.7:
        length = rng.choice([1, 2])
        if rng.random() < 0.5:
            visual = rng.choice([visual_a, visual_b, (rng.choice(list(COLOURS)), rng.choice(list(SHAPES)))])
            fillers.append((visual, None, length))
        else:
            fillers.append((None, rng.choice(list(TONES)), length))
        slack -= length

    events = [(v, t, n) for (v, t), n in zip(cells, lengths)] + fillers
    rng.shuffle(events)
    # Leftover clips become gaps; gaps of 0 put two events back to back (e.g. the same shape while the
    # pitch changes), which only the audio can split.
    gaps = [0] * (len(events) + 1)
    for _ in range(slack):
        gaps[rng.randrange(len(gaps))] += 1

    segments = []
    clip = gaps[0]
    for (visual, tone, length), gap_after in zip(events, gaps[1:]):
        start, end = clip * CLIP_SECONDS, (clip + length) * CLIP_SECONDS
        shape = _place_shape(rng, config, visual) if visual else None
        beeps = _beep_train(rng, start, end) if tone else ()
        segments.append(Segment(start, end, shape, tone, beeps))
        clip += length + gap_after

    chosen = sorted(rng.sample(cells, config.queries_per_video),
                    key=lambda cell: next(i for i, s in enumerate(segments) if _matches(s, *cell)))
    queries = tuple(_make_query(rng, first_qid + n, segments, visual, tone) for n, (visual, tone) in enumerate(chosen))
    grey = rng.randint(*BACKGROUND_GREY)
    return VideoPlan(
        vid=f"{split}_{index:04d}",
        split=split,
        duration=duration,
        background=(grey, grey, grey),
        noise_seed=rng.randrange(2**31),
        segments=tuple(segments),
        queries=queries,
    )


def _place_shape(rng: random.Random, config: CorpusConfig, visual: tuple[str, str]) -> Shape:
    colour, name = visual
    geometry = SHAPES[name]
    width = _even(geometry["width"] * config.width)
    height = _even(geometry["height"] * config.height)
    thickness = max(2, _even(geometry["thickness"] * config.width)) if geometry["thickness"] else None
    margin = _even(0.03 * config.width)
    # Even coordinates keep the box edges on yuv420p chroma samples, so the colour stays clean.
    x = 2 * rng.randint(margin // 2, (config.width - width - margin) // 2)
    y = 2 * rng.randint(margin // 2, (config.height - height - margin) // 2)
    return Shape(colour, name, (x, y, width, height), thickness)


def _even(value: float) -> int:
    return 2 * max(1, round(value / 2))


def _beep_train(rng: random.Random, start: float, end: float) -> tuple[tuple[float, float], ...]:
    beeps = []
    t = round(start + rng.uniform(0.05, 0.35), 3)
    while True:
        length = round(rng.uniform(*BEEP_SECONDS), 3)
        if t + length > end - 0.05:
            return tuple(beeps)
        beeps.append((t, round(t + length, 3)))
        t = round(t + length + rng.uniform(*BEEP_PAUSE_SECONDS), 3)


def _matches(segment: Segment, visual: tuple[str, str] | None, tone: str | None) -> bool:
    return segment.visual == visual and segment.tone == tone


def _make_query(rng: random.Random, qid: int, segments: list[Segment], visual: tuple[str, str], tone: str) -> Query:
    target = next(i for i, s in enumerate(segments) if _matches(s, visual, tone))
    visual_only = tuple(i for i, s in enumerate(segments) if s.visual == visual and s.tone != tone)
    audio_only = tuple(i for i, s in enumerate(segments) if s.tone == tone and s.visual != visual)
    if not (visual_only and audio_only):  # the 2 x 2 crossing guarantees both; never ship a query without them
        raise AssertionError(f"query {qid} lost its distractors: {segments}")
    clips = (segments[target].end - segments[target].start) // CLIP_SECONDS
    return Query(
        qid=qid,
        text=QUERY_TEMPLATE.format(colour=visual[0], shape=visual[1], tone=tone),
        segment=target,
        visual_only_distractors=visual_only,
        audio_only_distractors=audio_only,
        saliency_scores=_saliency(rng, clips),
    )


def _saliency(rng: random.Random, clips: int) -> tuple[tuple[int, int, int], ...]:
    """Three annotators: 4 in the core of the moment, 2-3 (they disagree) on its edge clips.

    Windows of two clips are all core, so every annotator has at least one 4 (HL-VeryGood positives).
    """
    scores = []
    for i in range(clips):
        edge = clips >= 3 and i in (0, clips - 1)
        scores.append(tuple(rng.choice([2, 3]) if edge else 4 for _ in range(3)))
    return tuple(scores)
