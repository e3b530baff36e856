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

from lamflow.errors import LamflowError
from lamflow.datasets.msrvtt_format import read_videodatainfo
from lamflow.fileio import iter_jsonl
from lamflow.train.tasks.qvhighlights_eval import EvaluationInputError, listed

BLEU_KEYS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
METRIC_KEYS: tuple[str, ...] = (*BLEU_KEYS, "METEOR", "ROUGE_L", "CIDEr", "SPICE")
# The jars pycocoevalcap's SPICE downloads (spice/get_stanford_models.py) into spice/lib/.
SPICE_MODEL_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
JAVA_HINT = "install a Java runtime (Debian: apt-get install default-jre-headless; `make setup` does it)"


def _caption(record: Mapping, field: str, where: str) -> str:
    caption = record.get(field)
    if not isinstance(caption, str) or not caption.strip():
        raise EvaluationInputError(f"{where}: '{field}' must be a non-empty string, got {caption!r}")
    return caption


def _video_id(record: Mapping, field: str, where: str) -> str:
    vid = record.get(field)
    if not isinstance(vid, str) or not vid:
        raise EvaluationInputError(f"{where}: '{field}' must be a non-empty string (the video id), got {vid!r}")
    return vid


def _msrvtt_references(path: Path, split: str | None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """References per video of an MSRVTT videodatainfo file, and every listed video's split."""
    info = read_videodatainfo(path, split)
    references: dict[str, list[str]] = {
        vid: [] for vid, video_split in info.splits.items() if split is None or video_split == split
    }
    for vid, caption in info.sentences:
        if vid in references:
            references[vid].append(caption)
    unreferenced = {vid for vid, captions in references.items() if not captions}
    if unreferenced:
        raise EvaluationInputError(
            f"{path}: {len(unreferenced)} video(s) have no sentence to score against: {listed(unreferenced)}"
        )
    return references, info.splits


def _jsonl_references(path: Path) -> dict[str, list[str]]:
    references: dict[str, list[str]] = {}
    for line, record in iter_jsonl(path, "caption reference file"):
        where = f"{path}:{line}"
        references.setdefault(_video_id(record, "vid", where), []).append(_caption(record, "caption", where))
    if not references:
        raise EvaluationInputError(f"{path}: no reference captions; expected {{\"vid\", \"caption\"}} lines")
    return references


def load_references(path: str | Path, split: str | None = None) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``({vid: [reference, ...]}, {vid: split})`` of the videos to score (the split map is empty for JSONL).

    A ``.json`` file is read as MSRVTT videodatainfo (``split`` picks one split's videos); any other name
    as JSONL ``{"vid", "caption"}`` lines, for which ``split`` is an error.
    """
    path = Path(path)
    if path.suffix == ".json":
        return _msrvtt_references(path, split)
    if split is not None:
        raise EvaluationInputError(f"{path}: --split selects MSRVTT videos; a JSONL reference file has no splits")
    return _jsonl_references(path), {}


def load_predictions(
    path: str | Path, references: Mapping[str, Sequence[str]], splits: Mapping[str, str]
) -> dict[str, str]:
    """``{vid: caption}``: exactly one non-empty caption for every video of ``references``."""
    path = Path(path)
    predictions: dict[str, str] = {}
    unknown: dict[str, str] = {}  # vid -> its split ("" when not in the file at all)
    for line, record in iter_jsonl(path, "caption prediction file"):
        where = f"{path}:{line}"
        vid = _video_id(record, "vid", where)
        caption = _caption(record, "caption", where)
        if vid in predictions or vid in unknown:
            raise EvaluationInputError(f"{where}: duplicate vid {vid!r}; write one caption per video")
        if vid in references:
            predictions[vid] = caption
        else:
            unknown[vid] = splits.get(vid, "")
    if unknown:
        other_split = sorted({split for split in unknown.values() if split})
        hint = f" (they belong to split {', '.join(other_split)}: pass that --split)" if other_split else ""
        raise EvaluationInputError(
            f"{path}: {len(unknown)} prediction(s) for videos not in the ground truth being scored: "
            f"{listed(set(unknown))}{hint}"
        )
    missing = set(references) - set(predictions)
    if missing:
        raise EvaluationInputError(
            f"{path}: no caption for {len(missing)} of {len(references)} ground-truth video(s): {listed(missing)}; "
            "every scored video needs one"
        )
    return predictions


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
