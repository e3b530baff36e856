"""`lamflow make-demo-data`: generate the audio-visual demo corpus (videos + QVHighlights annotations + captions)."""
from __future__ import annotations

import argparse
import dataclasses
import sys

DESCRIPTION = """\
Generate a corpus of short real videos with ffmpeg, plus QVHighlights-format annotations, on which a
moment can only be found by looking AND listening.

Each video shows coloured shapes (red/green/blue/yellow square, bar or frame) on a grey background
for a few seconds at a time, while trains of short beeps (0.15-0.3 s, low 400 Hz / middle 1000 Hz /
high 2500 Hz) play over faint pink noise. A query such as "the red square while the high tone beeps"
names a shape and a pitch; its moment is the one segment where both co-occur. Every video crosses two
shapes with two pitches, so each query also has a segment with only its shape (other pitch) and one
with only its pitch (other shape). The beeps are shorter than the 1 s between video tokens: only the
0.1 s audio tokens resolve them. Segments sit on the 2-second clip grid, so clip ids and saliency
scores are exact. Each video also has one caption naming its first crossed segment and what changes at the
next one ("a red shape with a high tone, then the tone turns low"): the order of events and which
modality changed, so captions also need both the picture and the sound, at the same time.

Writes into --out:
  videos/<vid>.mp4   H.264 320x240 25 fps + mono AAC 16 kHz, about --duration seconds each
  train.jsonl        QVHighlights annotation lines (qid, query, duration, vid, relevant_windows,
  val.jsonl          relevant_clip_ids, saliency_scores with three annotators 0-4)
  texts.jsonl        {"vid", "id", "text"} per query: the input of `lamflow extract --texts`
  train_captions.jsonl  {"vid", "caption"} per video: the captioning task's captions
  val_captions.jsonl    and references (`lamflow train ... data.task=captioning`, `lamflow eval captioning`)
  corpus.json        every drawn shape (box, colour, times) and every beep (start, end, pitch)

The same --seed gives byte-identical annotations and schedules. Re-running into the same --out with
the same settings reuses the finished videos; videos whose settings changed are re-rendered.
"""

EPILOG = """\
examples:
  lamflow make-demo-data --out demo/corpus                 # 48 train + 16 val videos, ~20 s on 2 cores
  lamflow make-demo-data --out /tmp/tiny --quick           # 4 train + 2 val videos of ~20 s
  lamflow make-demo-data --out demo/corpus --seed 7 --train-videos 200 --jobs 8
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-demo-data",
        help="generate the audio-visual demo corpus: ffmpeg videos + QVHighlights annotations + captions",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny corpus for tests and smoke runs (4 train + 2 val videos of 18-22 s); "
                             "the size flags below still override it")
    parser.add_argument("--train-videos", type=int, metavar="N", help="number of training videos (default 48)")
    parser.add_argument("--val-videos", type=int, metavar="N", help="number of validation videos (default 16)")
    parser.add_argument("--duration", type=int, metavar="SECONDS",
                        help="mean video length, an even number of seconds (default 30; --quick: 20)")
    parser.add_argument("--duration-jitter", type=int, metavar="SECONDS",
                        help="videos last --duration plus or minus up to this many seconds, in even steps "
                             "(default 4; --quick: 2)")
    parser.add_argument("--queries-per-video", type=int, metavar="K",
                        help="how many of the four crossed shape x pitch segments of each video become "
                             "queries, 1-4 (default 4)")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed of the schedules (default 0)")
    parser.add_argument("--jobs", type=int, metavar="J",
                        help="parallel ffmpeg processes (default: the number of usable CPU cores)")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.demo.corpus import CorpusConfig, build_corpus

    overrides = {
        name: value
        for name, value in (
            ("train_videos", args.train_videos),
            ("val_videos", args.val_videos),
            ("duration", args.duration),
            ("duration_jitter", args.duration_jitter),
            ("queries_per_video", args.queries_per_video),
            ("seed", args.seed),
        )
        if value is not None
    }
    base = CorpusConfig.quick() if args.quick else CorpusConfig()
    try:
        config = dataclasses.replace(base, **overrides)
    except ValueError as error:
        print(f"lamflow make-demo-data: {error}", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs < 1:
        print("lamflow make-demo-data: --jobs must be at least 1", file=sys.stderr)
        return 2
    result = build_corpus(config, args.out, jobs=args.jobs, progress=lambda line: print(line, flush=True))
    print(f"train annotations: {result.train_annotations}\nval annotations:   {result.val_annotations}\n"
          f"texts:             {result.texts}\ncaptions:          {result.train_captions}, {result.val_captions}\n"
          f"schedule:          {result.corpus_json}")
    return 0
