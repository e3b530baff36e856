"""`lamflow predict`: write official prediction jsonl for a split with a trained checkpoint."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="write predictions of a checkpoint in the official format (QVHighlights, classification, captions)",
        description=(
            "Rebuild the model stored in CHECKPOINT (a checkpoints/step-*.pt file of `lamflow train`), run it over "
            "every item of the chosen split of the stored config, and write one JSON line per query: qid, query, "
            "vid, pred_relevant_windows [[start, end, score], ...] best first and pred_saliency_scores (one per "
            "2-second clip), which `lamflow eval qvhighlights` scores. For classification: key, top_labels (the "
            "top 5 class names, best first) and their scores. For captioning: one {\"vid\", \"caption\"} line per "
            "video (`lamflow eval captioning`); for audio description one {\"ad_id\", \"caption\"} line per AD "
            "(`lamflow eval ad`), written by the model's beam search (model.beam_size; 1 = greedy). "
            "Works under torchrun too (each rank predicts a share; rank 0 writes the file). A shard spec that runs "
            "a command (pipe:CMD) is taken from the key=value changes only, never from the checkpoint's config."
        ),
    )
    parser.add_argument("checkpoint", help="checkpoint file written by lamflow train")
    parser.add_argument("--split", choices=("train", "val"), default="val", help="which split of the config to predict (default val)")
    parser.add_argument("--out", required=True, help="output jsonl path")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="changes to the stored config, e.g. data.val_shards=/data/test_shards data.val_annotations=test.jsonl")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from lamflow.train.predict import predict_checkpoint

    print(predict_checkpoint(args.checkpoint, args.split, args.out, args.overrides))
    return 0
