"""`lamflow extract`: videos -> time-stamped CLIP / audio / text tokens, or images -> CLIP patch tokens,
in WebDataset shards (Dask)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Callable

from lamflow.contract import MANIFEST
from lamflow.errors import LamflowError
from lamflow.pipelines.failures import format_failures
from lamflow.pipelines.plan import Partition
from lamflow.pipelines.settings import DTYPES, FRAME_RULES, PRESETS, ClipSettings, ExtractSettings, ImageSettings
from lamflow.pipelines.shards import DEFAULT_SHARD_BYTES, DEFAULT_SHARD_SAMPLES
from lamflow.pipelines.watchdog import DEFAULT_WORKER_TIMEOUT

_DEFAULTS = ExtractSettings()
SETTINGS_BY_MEDIA = {"video": ExtractSettings, "image": ImageSettings}
# Options of ExtractSettings' own fields (frames, audio): they mean nothing to an image run.
_VIDEO_ONLY = [f.name for f in dataclasses.fields(ExtractSettings) if f.name not in
               {c.name for c in dataclasses.fields(ClipSettings)}]


def _resources(text: str) -> dict[str, float]:
    """Parse 'GPU=1,MEM=4e9' into {'GPU': 1.0, 'MEM': 4e9}."""
    resources = {}
    for item in filter(None, text.split(",")):
        name, sep, amount = item.partition("=")
        try:
            resources[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"--task-resources expects NAME=AMOUNT[,NAME=AMOUNT], got {text!r}")
    return resources


def _partition(text: str) -> Partition:
    try:
        return Partition.parse(text)
    except LamflowError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract time-stamped video/audio/text tokens from videos (or CLIP patch tokens from images) into "
             "WebDataset shards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Decode every input with ffmpeg (in a subprocess, so a bad file cannot take a worker down), embed\n"
            "sampled frames with an open_clip image tower, turn the audio into log-mel tokens (or pretrained\n"
            "wav2vec2/HuBERT/CNN14 features, --audio-model), optionally embed\n"
            "texts with the same CLIP text tower, and write one WebDataset sample per input into\n"
            "OUT/shards/shard-NNNNNN.tar, with OUT/manifest.jsonl (one record per input, ok or error),\n"
            "OUT/stats.json, OUT/sizes.json and OUT/extraction.json (the settings of the run).\n\n"
            "Work is spread over Dask: an embedded local cluster of --workers processes, or an existing cluster\n"
            "(--scheduler). Each worker loads the models once. Running the same command again resumes: inputs\n"
            "already in a shard are skipped, nothing is duplicated, and a run killed at any moment loses only\n"
            "unfinished work. Inputs that failed (corrupt, truncated, no streams) are recorded, not fatal;\n"
            "--retry-failed tries them again.\n\n"
            "--media image makes an image run instead (image folders such as ImageNet's class/xxx.JPEG):\n"
            "directories are searched for common image formats (JPEG, PNG, WebP, BMP, TIFF), each image is\n"
            "decoded with Pillow, resized and centre-cropped by the CLIP model's own preprocessing, and stored\n"
            "as one 'image' stream: the ViT's class token and patch tokens (1 + 49 for ViT-B/32), projected\n"
            "into CLIP's joint space, every timestamp 0. Its key comes from its path under the directory\n"
            "(class/xxx), which is recorded, so a classifier can take its label from the folder\n"
            "(data.labels: folder). Only the CLIP options apply; a video run and an image run never share an OUT."
        ),
        epilog=(
            "examples:\n"
            "  lamflow extract videos/ --out feats --workers 8\n"
            "  lamflow extract 'clips/**/*.mp4' list.csv --out feats --fps 2 --dtype float32\n"
            "  lamflow extract videos/ --out feats --texts highlight_train_release.jsonl --pretrained openai\n"
            "  lamflow extract videos/ --out feats --scheduler tcp://head:8786 --task-resources GPU=1 --device cuda\n"
            "  lamflow extract imagenet/train --media image --out feats/train --pretrained openai --workers 8"
        ),
    )
    parser.add_argument(
        "sources", nargs="+", metavar="SOURCE",
        help="media files, directories (searched recursively by extension), globs (quote them), or list files: "
             ".txt (one path per line; a line whose first non-blank character is '#' is a comment, so give a "
             "file named '#...' as ./#name) or .csv/.jsonl with a 'path' column and optional metadata columns "
             "(a 'key' column names the sample; no comments). Local paths or fsspec URLs (s3://, gs://, "
             "https://). A path that exists is taken literally ('video [2020].mp4' is a file); only one that "
             "does not is expanded as a glob.",
    )
    parser.add_argument("--out", required=True, help="output directory (created; an existing one is resumed)")
    features = parser.add_argument_group("features (recorded in extraction.json; a resume must use the same)")
    features.add_argument("--media", choices=tuple(SETTINGS_BY_MEDIA), default="video",
                          help="what the inputs are: 'video' (frames, audio, texts) or 'image' (CLIP patch tokens per "
                               "image; only --clip-model, --pretrained, --dtype and --device apply) (default video)")
    features.add_argument("--fps", type=float, default=_DEFAULTS.fps,
                          help=f"video frames embedded per second (default {_DEFAULTS.fps:g})")
    features.add_argument("--frame-rule", choices=FRAME_RULES, default=_DEFAULTS.frame_rule,
                          help="which frame represents each 1/fps interval: 'start' = the frame on screen at k/fps, "
                               "'middle' = at (k+0.5)/fps (the last frame when that is past the end). Either way a "
                               "video of D seconds, as decoded, gets ceil(D*fps) tokens: 9 for 4.004 s at --fps 2 "
                               f"(default {_DEFAULTS.frame_rule})")
    features.add_argument("--sample-rate", type=int, default=_DEFAULTS.sample_rate,
                          help=f"audio is decoded to mono at this rate in Hz (default {_DEFAULTS.sample_rate})")
    features.add_argument("--audio-hop", type=float, default=_DEFAULTS.audio_hop,
                          help="seconds per audio token, whatever --audio-model (its frames pooled per hop; "
                               f"default {_DEFAULTS.audio_hop:g})")
    features.add_argument("--n-mels", type=int, default=_DEFAULTS.n_mels,
                          help=f"log-mel only: mel bands = audio token dimension (default {_DEFAULTS.n_mels})")
    features.add_argument("--audio-model", default=_DEFAULTS.audio_model,
                          help="audio encoder: 'log-mel'; a torchaudio wav2vec2-family bundle name (WAV2VEC2_BASE, "
                               "HUBERT_BASE, WAVLM_BASE ..., from torchaudio's download cache); or a local checkpoint: "
                               "a wav2vec2/HuBERT/WavLM model saved with torch.save as {'config': kwargs of "
                               "torchaudio.models.wav2vec2_model, 'state_dict': ...}, or PANNs CNN14 as published "
                               "(Cnn14_mAP=0.431.pth; --sample-rate 32000 --audio-hop 2 gives the QVHighlights field's "
                               "2-s features). One token per --audio-hop either way; the checkpoint's sha256 and token "
                               f"rate are recorded (default {_DEFAULTS.audio_model})")
    features.add_argument("--clip-model", default=_DEFAULTS.clip_model,
                          help=f"open_clip model name, e.g. ViT-B-32-quickgelu or lamflow-tiny (default {_DEFAULTS.clip_model})")
    features.add_argument("--pretrained", default=_DEFAULTS.pretrained,
                          help="CLIP weights: 'none' (random init: features carry no learned meaning), an open_clip "
                               "tag such as 'openai' (downloaded by open_clip), or a local checkpoint path "
                               f"(default {_DEFAULTS.pretrained})")
    features.add_argument("--dtype", choices=DTYPES, default=_DEFAULTS.dtype,
                          help=f"dtype of the stored arrays (default {_DEFAULTS.dtype})")
    features.add_argument("--texts", metavar="JSONL",
                          help="queries/captions to embed with the CLIP text tower: jsonl with a video column "
                               "(key or vid), a text column (text, query or caption) and an id column (id, qid "
                               "or sen_id) — e.g. a QVHighlights annotation file")
    features.add_argument("--preset", choices=PRESETS, default=_DEFAULTS.preset,
                          help="reproduce a published extractor's video and text features instead of lamflow's own: "
                               "moment_detr = jayleicn/moment_detr's run_on_video (one raw CLIP feature per 2-s clip, "
                               "query tokens before the text projection), what its checkpoints and QD-DETR/CG-DETR were "
                               "trained on; it sets --fps 0.5 and --dtype float32 (README: Features for published models)")
    compute = parser.add_argument_group("compute (may change between resumed runs)")
    compute.add_argument("--workers", type=int, default=1,
                         help="worker processes of the embedded local Dask cluster (default 1; ignored with --scheduler)")
    compute.add_argument("--scheduler", metavar="ADDRESS",
                         help="address of an existing Dask scheduler (e.g. tcp://head:8786) instead of a local cluster")
    compute.add_argument("--worker-timeout", type=float, default=DEFAULT_WORKER_TIMEOUT, metavar="SECONDS",
                         help="stop with an error (finished videos kept: rerun to continue) once the cluster has had "
                              "no worker for this long, e.g. all SLURM jobs ended or never started; 0 = wait forever "
                              f"(default {DEFAULT_WORKER_TIMEOUT:g})")
    compute.add_argument("--task-resources", type=_resources, metavar="NAME=AMOUNT",
                         help="Dask resources each video task needs, e.g. GPU=1: tasks then run only on workers "
                              "started with matching --resources (see cluster/README.md)")
    compute.add_argument("--device", default=_DEFAULTS.device,
                         help="torch device for the encoders: cpu, cuda, cuda:N or mps; one this machine cannot run "
                              f"is an error before any work starts (default {_DEFAULTS.device})")
    compute.add_argument("--frame-batch", type=int, default=_DEFAULTS.frame_batch,
                         help=f"frames decoded and embedded at a time; bounds memory on long videos (default {_DEFAULTS.frame_batch})")
    output = parser.add_argument_group("output")
    output.add_argument("--shard-samples", type=int, default=DEFAULT_SHARD_SAMPLES,
                        help=f"videos per shard at most (default {DEFAULT_SHARD_SAMPLES})")
    output.add_argument("--shard-bytes", type=float, default=DEFAULT_SHARD_BYTES,
                        help=f"start a new shard once a shard reaches this many bytes (default {DEFAULT_SHARD_BYTES:.0e})")
    output.add_argument("--partition", metavar="K/N", type=_partition,
                        help="extract only partition K (0..N-1) of N: the inputs whose key hashes to K, the same "
                             "ones on every run, into OUT/partitions/part-K-of-N/ as an independent, resumable run "
                             "with its own client (e.g. one SLURM array task each, cluster/extract_array.sbatch). "
                             "Every reader (train, predict, inspect, export) takes OUT as one dataset")
    output.add_argument("--retry-failed", action="store_true",
                        help="extract inputs that failed in an earlier run again (default: skip them)")
    output.add_argument("--overwrite", action="store_true",
                        help="delete OUT's previous shards and records first (needed to change feature settings)")
    output.add_argument("--extensions", default=None,
                        help="comma-separated file extensions searched in directories (default: common video formats, "
                             "or image formats with --media image)")
    output.add_argument("--json", action="store_true", help="print the run summary as JSON")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=handle)


def _settings(args: argparse.Namespace) -> ClipSettings:
    """The run's settings from the options of its --media; an option of the other kind is an error."""
    kind = SETTINGS_BY_MEDIA[args.media]
    if kind is ImageSettings:
        given = [f"--{name.replace('_', '-')}" for name in _VIDEO_ONLY if getattr(args, name) != getattr(_DEFAULTS, name)]
        given += ["--texts"] if args.texts else []
        if given:
            raise LamflowError(f"{', '.join(given)} apply to video runs; an image run (--media image) takes only "
                               "--clip-model, --pretrained, --dtype and --device")
    return kind(**{f.name: getattr(args, f.name) for f in dataclasses.fields(kind)})


def handle(args: argparse.Namespace, cluster_status: Callable[[], str] | None = None) -> int:
    """Run the parsed command; ``cluster_status`` (from cluster/slurm_extract.py) describes the workers'
    jobs in the messages of a run that waits for or loses its workers."""
    from lamflow.devices import require_device

    settings = _settings(args)
    if not args.scheduler:  # local workers use this machine's devices and caches; remote workers check their own
        require_device(settings.device, "--device")
        if isinstance(settings, ExtractSettings):
            from lamflow.pipelines.audio_models import check_audio_model

            check_audio_model(settings)

    from lamflow.pipelines.extract import run_extraction

    if settings.pretrained == "none":
        print("WARNING: --pretrained none: CLIP weights are RANDOM; image/video/text features carry no learned "
              "meaning (fine for tests and benchmarks, not for training). Pass --pretrained openai or a "
              "checkpoint path for real features.", file=sys.stderr)
    extensions = tuple(f".{e.strip().lstrip('.')}" for e in args.extensions.split(",")) if args.extensions else None
    summary = run_extraction(
        args.sources, args.out, settings, workers=args.workers, scheduler=args.scheduler,
        shard_samples=args.shard_samples, shard_bytes=int(args.shard_bytes), retry_failed=args.retry_failed,
        texts=args.texts, overwrite=args.overwrite, extensions=extensions,
        task_resources=args.task_resources, progress=not args.no_progress,
        worker_timeout=args.worker_timeout or None, cluster_status=cluster_status, partition=args.partition,
    )
    for repair in summary.repairs:
        print(f"resumed after an interrupted run: {repair}", file=sys.stderr)
    if summary.unmatched_text_keys:
        shown = ", ".join(summary.unmatched_text_keys[:5])
        print(f"note: {len(summary.unmatched_text_keys)} video(s) in --texts match no input ({shown} ...)", file=sys.stderr)
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"{summary.out_dir}: {summary.ok} extracted, {summary.failed} failed, {summary.skipped_done} already "
              f"done, {summary.skipped_failed} failed before (use --retry-failed) of {summary.inputs} inputs; "
              f"{len(summary.shards_written)} shard(s) written in {summary.seconds:.1f} s "
              f"({summary.videos_per_second:.2f} {settings.kind}s/s)")
        where = f"{summary.out_dir}/{MANIFEST} (lamflow inspect {args.out} counts them by reason)"
        for line in format_failures(summary.failures.reasons, summary.failures.examples, where):
            print(line)
    if settings.pretrained == "none" and summary.ok:
        print("WARNING: features were computed with RANDOM CLIP weights (--pretrained none).", file=sys.stderr)
    return 0  # failed inputs are recorded in the manifest, not a failed run

