"""Caption metrics exactly as the field computes them: pycocoevalcap (coco-caption), called, not copied.

Both sides are tokenised by pycocoevalcap's ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 in Java, lower-cased,
punctuation removed), then scored by its ``Bleu(4)`` (BLEU-1..4, "closest" reference length), ``Meteor``
(METEOR 1.5 in Java), ``Rouge`` (ROUGE-L) and ``Cider`` (its CIDEr is CIDEr-D: clipping, length penalty,
x10, IDF from the references being scored, so a subset of videos scores differently from the whole set).
The result keys and values are pycocoevalcap's own (fractions, not percent). SPICE needs Stanford CoreNLP
3.6.0 models that pycocoevalcap downloads on first use; it is computed only when those jars are already in
place (``spice_models_present``), otherwise reported as ``null`` with a note saying why.

Ground truth: MSRVTT's ``{train_val,test}_videodatainfo.json`` (``videos[{video_id, split}]``,
``sentences[{video_id, caption}]``; ``split`` restricts scoring to one split's videos) or a JSONL file of
``{"vid", "caption"}`` lines (several lines per video are several references). Predictions: JSONL, one
``{"vid", "caption"}`` line per scored video.
"""
from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lamflow.datasets.msrvtt_format import caption_field, name_field, read_captions
from lamflow.errors import LamflowError
from lamflow.fileio import iter_jsonl
from lamflow.train.tasks.scoring import EvaluationInputError, PredictionKeys, listed, one_prediction_per_key

BLEU_KEYS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
METRIC_KEYS: tuple[str, ...] = (*BLEU_KEYS, "METEOR", "ROUGE_L", "CIDEr", "SPICE")
# The jars pycocoevalcap's SPICE downloads (spice/get_stanford_models.py) into spice/lib/.
SPICE_MODEL_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
JAVA_HINT = "install a Java runtime (Debian: apt-get install default-jre-headless; `make setup` does it)"
PREDICTION_KEYS = PredictionKeys(
    key="vid",
    prediction="caption",
    expected="ground-truth video(s)",
    truth="the ground truth being scored",
    why_every_one="every scored video needs one",
)


def load_references(path: str | Path, split: str | None = None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``({vid: [reference, ...]}, {vid: split})`` of the videos to score (the split map is empty for JSONL).

    The caption files of the captioning task (``lamflow.datasets.msrvtt_format.read_captions``): MSRVTT
    videodatainfo (``.json``; ``split`` picks one split's videos, None all of them) or JSONL ``{"vid",
    "caption"}`` lines. Every video of an MSRVTT file (of the split) needs a sentence to score against.
    """
    file = read_captions(path, split)
    unreferenced = {vid for vid, video_split in file.splits.items() if split in (None, video_split)} - set(file.captions)
    if unreferenced:
        raise EvaluationInputError(
            f"{path}: {len(unreferenced)} video(s) have no sentence to score against: {listed(unreferenced)}"
        )
    return file.captions, file.splits


def load_predictions(
    path: str | Path, references: Mapping[str, Sequence[str]], splits: Mapping[str, str]
) -> dict[str, str]:
    """``{vid: caption}``: exactly one non-empty caption for every video of ``references``."""

    def other_splits(unknown: set[str]) -> str:
        found = sorted({splits[vid] for vid in unknown if vid in splits})
        return f"they belong to split {', '.join(found)}: pass that --split" if found else ""

    return one_prediction_per_key(
        iter_jsonl(path, "caption prediction file"),
        references,
        lambda record, where: name_field(record, "vid", where),
        lambda vid, record, where: caption_field(record, "caption", where),
        str(path),
        PREDICTION_KEYS,
        unknown_hint=other_splits,
    )


def _package_dir() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__)))


def spice_models_present() -> bool:
    """Whether pycocoevalcap's SPICE can run offline (its Stanford CoreNLP 3.6.0 jars are in place)."""
    return all((_package_dir() / "spice" / "lib" / jar).is_file() for jar in SPICE_MODEL_JARS)


def java_version() -> str:
    """``java -version``'s first line, or a LamflowError saying how to install Java."""
    try:
        completed = subprocess.run(["java", "-version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise LamflowError(f"no working Java runtime ({error}); pycocoevalcap needs one: {JAVA_HINT}") from None
    return (completed.stderr or completed.stdout).splitlines()[0].strip()


def _tokenize(captions: Mapping[str, Iterable[str]], what: str) -> dict[str, list[str]]:
    """pycocoevalcap's PTB tokenisation; a caption left without a word (e.g. only punctuation) is an error."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    try:
        tokenized = PTBTokenizer().tokenize({vid: [{"caption": c} for c in texts] for vid, texts in captions.items()})
    except OSError as error:  # no java, or pycocoevalcap's folder is read-only (it writes its input file there)
        raise LamflowError(
            f"pycocoevalcap's PTB tokenizer could not run ({error}); it needs Java ({JAVA_HINT}) and write access "
            f"to {_package_dir() / 'tokenizer'}"
        ) from None
    empty = {vid for vid, texts in captions.items() if any(not t for t in tokenized.get(vid, [""]))}
    if empty:
        raise EvaluationInputError(
            f"{what} captions of {len(empty)} video(s) have no word left after PTB tokenisation (it removes "
            f"punctuation): {listed(empty)}"
        )
    return tokenized


def caption_scores(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, Any]:
    """pycocoevalcap's corpus scores of ``predictions`` ({vid: caption}) against ``references``
    ({vid: [caption, ...]}), both over the same videos: ``{"Bleu_1": ..., ..., "CIDEr": ..., "SPICE": ...}``
    (SPICE ``None`` unless :func:`spice_models_present`)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    assert set(references) == set(predictions), "the callers check coverage first"
    gts = _tokenize(references, "reference")
    res = _tokenize({vid: [caption] for vid, caption in predictions.items()}, "predicted")
    scores: dict[str, Any] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update(zip(BLEU_KEYS, bleu))
    meteor = Meteor()
    try:
        scores["METEOR"], _ = meteor.compute_score(gts, res)
    except ValueError as error:  # the jar answered nothing parseable: it died (e.g. could not get its 2 GB heap)
        raise LamflowError(f"METEOR (Java) failed: {error}; it needs a Java runtime with a 2 GB heap") from None
    finally:
        del meteor  # its __del__ ends the Java process
    scores["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    scores["SPICE"] = None
    if spice_models_present():
        from pycocoevalcap.spice.spice import Spice

        scores["SPICE"], _ = Spice().compute_score(gts, res)
    return {key: (None if scores[key] is None else float(scores[key])) for key in METRIC_KEYS}


def evaluate_files(gt_path: str | Path, pred_path: str | Path, split: str | None = None) -> dict[str, Any]:
    """Score a caption prediction file: the metrics, what was scored, and the tools' versions.

    ``{"Bleu_1", ..., "CIDEr", "SPICE", "num_videos", "num_references", "tokenization", "versions",
    "notes"}``; ``notes`` says when SPICE was not computed and why.
    """
    references, splits = load_references(gt_path, split)
    predictions = load_predictions(pred_path, references, splits)
    java = java_version()
    result: dict[str, Any] = caption_scores(references, predictions)
    notes = []
    if result["SPICE"] is None:
        notes.append(
            "SPICE unavailable: pycocoevalcap's SPICE needs Stanford CoreNLP 3.6.0 "
            f"({' and '.join(SPICE_MODEL_JARS)}) in {_package_dir() / 'spice' / 'lib'}, which it would "
            "download; put them there to compute it"
        )
    result.update(
        num_videos=len(references),
        num_references=sum(len(captions) for captions in references.values()),
        tokenization="PTB (pycocoevalcap's Stanford CoreNLP 3.4.1 PTBTokenizer, lower-cased, punctuation removed)",
        versions={"pycocoevalcap": importlib.metadata.version("pycocoevalcap"), "java": java},
        notes=notes,
    )
    return result
