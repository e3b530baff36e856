"""The demo corpus's captions: the first moment where picture and sound meet, and what changes at the next one.

A video's caption names its first crossed segment (a shape on screen while beeps play; a one-sided filler
before it -- a shape in silence, beeps over an empty screen -- does not count) by colour and pitch, then says
how the next crossed segment differs: the pitch changes, the colour changes, both, or neither (another
shape of the same colour, with the same pitch):

    a red shape with a high tone, then the tone turns low
    a red shape with a high tone, then the shape turns blue
    a red shape with a high tone, then a blue shape with a low tone
    a red shape with a high tone, then another red shape with a high tone

So a caption reads the order of events and which modality changed between them, from both streams at once:
a constant sentence matches the template words only, and a model that hears the pitches and sees the colours
but ignores when they co-occur still names the wrong pair. The shape (square, bar or frame) is left out:
it does not survive randomly initialised CLIP features (a nearest-centroid probe of the quick corpus's frames
finds the shape at chance, the colour ~3 times in 4 and the pitch of the audio tokens always).

One caption per video, so that the decoder's target is a function of the video; the captions come from the
same schedule as the QVHighlights annotations, so the videos (and the moment retrieval numbers) do not change.
"""
from __future__ import annotations

import json

from lamflow.demo.schedule import VideoPlan

CROSSED = "a {colour} shape with a {tone} tone"
THEN = {  # by (colour changed, tone changed)
    (False, True): "then the tone turns {tone}",
    (True, False): "then the shape turns {colour}",
    (True, True): f"then {CROSSED}",
    (False, False): f"then another {CROSSED.removeprefix('a ')}",
}


def caption(first: tuple[str, str], then: tuple[str, str]) -> str:
    """The caption of two consecutive crossed events, each a (colour, pitch) pair."""
    (colour, tone), (next_colour, next_tone) = first, then
    change = THEN[(next_colour != colour, next_tone != tone)]
    return f"{CROSSED.format(colour=colour, tone=tone)}, {change.format(colour=next_colour, tone=next_tone)}"


def captions(plan: VideoPlan) -> list[str]:
    """The video's captions (one): its first two crossed segments, in time order."""
    first, then = [(s.shape.colour, s.tone) for s in plan.segments if s.shape and s.tone][:2]
    return [caption(first, then)]


def captions_jsonl(plans: list[VideoPlan], split: str) -> str:
    """``{"vid", "caption"}`` lines of ``split``'s videos: the input of the captioning task and its references."""
    return "".join(json.dumps({"vid": p.vid, "caption": c}) + "\n" for p in plans if p.split == split for c in captions(p))
